"""The admin index's summary line (templates/admin/index.html)."""

from django import template

from herder.dashboard import summary

register = template.Library()


@register.inclusion_tag("admin/herder_summary.html")
def herder_summary() -> dict:
    return {"summary": summary()}
