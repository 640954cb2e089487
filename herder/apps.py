from django.apps import AppConfig
from django.db.models.signals import post_save


class HerderConfig(AppConfig):
    name = "herder"

    def ready(self) -> None:
        from herder import events

        # Rows every path records, told once (herder/events.py); lazy senders:
        # herder/ does not import the apps' models.
        post_save.connect(events.minion_run_saved, sender="minions.MinionRun", dispatch_uid="herder.events.minion_run")
        post_save.connect(
            events.credit_entry_saved, sender="accounts.CreditEntry", dispatch_uid="herder.events.credit_entry"
        )
        post_save.connect(events.daemon_saved, sender="daemons.Daemon", dispatch_uid="herder.events.daemon")
