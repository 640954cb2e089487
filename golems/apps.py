from django.apps import AppConfig


class GolemsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "golems"
