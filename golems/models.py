from django.db import models


class Golem(models.Model):
    """The golem of one webstrate: its container, kept for the admin and the supervisor."""

    class State(models.TextChoices):
        # Claimed and committed; its container is being started (no database
        # lock is held across Docker calls). `started` is the claim's time.
        STARTING = "starting"
        RUNNING = "running"
        # Its container exited or vanished; the supervisor starts a new one.
        CRASHED = "crashed"
        KILLED = "killed"
        REAPED = "reaped"

    webstrate = models.CharField(max_length=128, unique=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.RUNNING, db_index=True)
    container_id = models.CharField(max_length=64, blank=True)
    container_name = models.CharField(max_length=255, blank=True)
    created = models.DateTimeField(auto_now_add=True)
    started = models.DateTimeField(null=True, blank=True)
    stopped = models.DateTimeField(null=True, blank=True)
    # The last spawn request or minion for this webstrate: idle golems are reaped.
    last_active = models.DateTimeField(null=True, blank=True, db_index=True)
    restarts = models.PositiveIntegerField(default=0)
    # Crashes in a row, each within a minute of its start: restarts wait longer and longer.
    crash_streak = models.PositiveIntegerField(default=0)
    # Why the container last stopped, when the herder knows.
    error = models.CharField(max_length=255, blank=True)
    # Names the container's start (its label herder.generation): the golem's proof
    # is derived from it and SECRET_KEY, so a new container has a new proof.
    generation = models.CharField(max_length=64, blank=True)

    class Meta:
        ordering = ["webstrate"]

    def __str__(self) -> str:
        return f"golem {self.webstrate} ({self.state})"

    @property
    def is_running(self) -> bool:
        return self.state == self.State.RUNNING and bool(self.container_id)


class GolemPresence(models.Model):
    """Which herder process holds a webstrate's golem control socket.

    Shared by every herder process through the database. The holder refreshes
    `seen` every heartbeat; a row not refreshed for three beats belongs to a
    process that died and may be taken over.
    """

    webstrate = models.CharField(max_length=128, unique=True)
    # The control consumer's channel-layer name: minions announce themselves there.
    channel = models.CharField(max_length=255)
    connected = models.DateTimeField()
    seen = models.DateTimeField(db_index=True)
    # The socket carried its golem's proof: it is never replaced by one that did not.
    proven = models.BooleanField(default=False)

    def __str__(self) -> str:
        return f"{self.webstrate} at {self.channel}"
