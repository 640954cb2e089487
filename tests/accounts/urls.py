"""The herder's routes plus a token-protected probe, for authentication tests."""

from django.urls import path
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import OptionalTokenAuthentication, TokenAuthentication
from herder.urls import handler400, handler404, handler500  # noqa: F401
from herder.urls import urlpatterns as herder_urlpatterns


class WhoAmIView(APIView):
    authentication_classes = [TokenAuthentication]

    class OutputSerializer(serializers.Serializer):
        email = serializers.EmailField(source="user.email")
        jti = serializers.CharField(source="auth.jti")

    def get(self, request):
        return Response(self.OutputSerializer(request).data)


class MaybeWhoView(APIView):
    authentication_classes = [OptionalTokenAuthentication]

    def get(self, request):
        return Response({"email": request.user.email if request.user else None})


urlpatterns = [
    path("test/whoami", WhoAmIView.as_view()),
    path("test/maybe", MaybeWhoView.as_view()),
    *herder_urlpatterns,
]
