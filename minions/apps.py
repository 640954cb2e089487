from django.apps import AppConfig


class MinionsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "minions"
