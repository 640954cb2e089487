from django.db import models


class Daemon(models.Model):
    """A long-lived container owned by an account and paid for in credits."""

    class State(models.TextChoices):
        STARTING = "starting"
        RUNNING = "running"
        # Stopped by the supervisor at a zero balance; the volume is kept.
        OUT_OF_CREDITS = "out_of_credits"
        # The container exited or vanished without being asked to.
        DEAD = "dead"
        FAILED = "failed"
        KILLED = "killed"

    owner = models.ForeignKey("accounts.Account", on_delete=models.PROTECT, related_name="daemons")
    name = models.CharField(max_length=63)
    # "<name>-<jti of the spawning token>": what the API answers, and the proxy's key.
    full_name = models.CharField(max_length=128, unique=True)
    # The daemon's own origin's host label (HERDER_DAEMON_ORIGIN's "{name}"): a
    # DNS label made from the name and a digest of full_name, as unguessable as it.
    host_label = models.CharField(max_length=63, blank=True, db_index=True)
    image = models.CharField(max_length=255)
    ports = models.JSONField(default=list)
    # container port (as text, JSON keys are strings) -> host port
    host_ports = models.JSONField(default=dict, blank=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.STARTING, db_index=True)
    container_id = models.CharField(max_length=64, blank=True)
    volume = models.CharField(max_length=255)
    created = models.DateTimeField(auto_now_add=True)
    started = models.DateTimeField(null=True, blank=True)
    stopped = models.DateTimeField(null=True, blank=True)
    # Metered up to this moment; the supervisor charges from here on.
    metered_until = models.DateTimeField(null=True, blank=True)
    credits_used = models.PositiveBigIntegerField(default=0)
    # The spawn in progress: a random token, set when a spawn claims the row
    # (state STARTING) and checked when it records the container, so exactly
    # one spawn owns the row at a time; empty when none is.
    claim = models.CharField(max_length=32, blank=True)
    claimed = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]
        constraints = [models.UniqueConstraint(fields=["owner", "name"], name="daemon_unique_owner_name")]

    def __str__(self) -> str:
        return self.full_name

    @property
    def is_running(self) -> bool:
        return self.state in (self.State.STARTING, self.State.RUNNING)

    @property
    def first_port(self) -> int | None:
        return int(self.ports[0]) if self.ports else None
