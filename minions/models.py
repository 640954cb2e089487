from django.db import models


class MinionRun(models.Model):
    """One controlled-minion run, kept for the admin's audit. Recorded when it
    starts (state running), completed when it ends."""

    class State(models.TextChoices):
        RUNNING = "running"
        # The program ran to its end or its time limit (whatever its exit code).
        FINISHED = "finished"
        # The run did not complete: engine down, client gone, herder stopped.
        FAILED = "failed"

    # When the run started.
    created = models.DateTimeField(auto_now_add=True, db_index=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.RUNNING, db_index=True)
    finished = models.DateTimeField(null=True, blank=True)
    env = models.CharField(max_length=64, db_index=True)
    image = models.CharField(max_length=255)
    client_addr = models.CharField(max_length=64, blank=True, db_index=True)
    # From Referer, else Origin: which page asked.
    origin = models.CharField(max_length=512, blank=True)
    webstrate = models.CharField(max_length=128, blank=True, db_index=True)
    container = models.CharField(max_length=64, blank=True)
    # Served by a container started ahead of time.
    warm = models.BooleanField(default=False)
    files_count = models.PositiveIntegerField(default=0)
    files_bytes = models.PositiveBigIntegerField(default=0)
    output_name = models.CharField(max_length=1024, blank=True)
    output_bytes = models.PositiveBigIntegerField(null=True, blank=True)
    stdout_bytes = models.PositiveBigIntegerField(default=0)
    stderr_bytes = models.PositiveBigIntegerField(default=0)
    # The end of a failed run's stderr (HERDER_MINION_KEEP_STDERR bytes): why it failed.
    stderr_tail = models.TextField(blank=True)
    exit_code = models.IntegerField(null=True, blank=True)
    timed_out = models.BooleanField(default=False)
    truncated = models.BooleanField(default=False)
    duration_ms = models.PositiveIntegerField(default=0)
    # Why the run did not complete, when it did not (engine down, client gone...).
    error = models.CharField(max_length=255, blank=True)

    class Meta:
        ordering = ["-created"]
        indexes = [models.Index(fields=["webstrate", "-created"])]

    def __str__(self) -> str:
        return f"{self.env} run {self.pk} ({self.webstrate or self.client_addr or 'anonymous'})"
