from django.db import models


class Thing(models.Model):
    """The result of a slow remote fetch, stored once per name."""

    name = models.CharField(max_length=200, unique=True)
    result = models.TextField()


class Fetch(models.Model):
    """One row each time the slow fetch actually runs: what the tests count."""

    name = models.CharField(max_length=200, db_index=True)
    pid = models.IntegerField()
    started = models.DateTimeField(auto_now_add=True)
