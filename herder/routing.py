"""WebSocket routes; the apps add their consumers here."""

websocket_urlpatterns: list = []
