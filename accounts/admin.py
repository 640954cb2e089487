"""Auditing accounts, tokens and the credit ledger.

Read-only except for two operator actions, both through the services so they
leave ledger rows: revoking tokens, and adding grant or adjustment entries.
"""

import csv

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q, QuerySet, Sum
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.urls import path, reverse
from django.utils.html import format_html

from accounts.models import Account, CreditEntry, Token
from accounts.services import credits_grant, token_revoke
from herder.admin_display import log_action, when

RECENT_ENTRIES = 50


class _ReadOnly:
    """Rows only services write; nobody, superusers included, edits or deletes them here."""

    def get_actions(self, request: HttpRequest) -> dict:
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


class _Times:
    """Token and account times with seconds and zone (herder.admin_display.when)."""

    @admin.display(description="issued", ordering="issued")
    def issued_at(self, token: Token) -> str:
        return when(token.issued)

    @admin.display(description="expires", ordering="expires")
    def expires_at(self, token: Token) -> str:
        return when(token.expires)

    @admin.display(description="revoked", ordering="revoked")
    def revoked_at(self, token: Token) -> str:
        return when(token.revoked)

    @admin.display(description="created", ordering="created")
    def created_at(self, row) -> str:
        return when(row.created)


class RecentEntriesFormSet(BaseInlineFormSet):
    def get_queryset(self) -> QuerySet:
        # Metering writes many rows; the full ledger is one link away.
        return super().get_queryset()[:RECENT_ENTRIES]


class CreditEntryInline(_Times, _ReadOnly, admin.TabularInline):
    model = CreditEntry
    formset = RecentEntriesFormSet
    fields = ("created_at", "kind", "amount", "subject", "token", "note")
    readonly_fields = fields
    ordering = ("-created", "-pk")
    verbose_name_plural = f"ledger (latest {RECENT_ENTRIES} entries)"
    show_change_link = False


class TokenInline(_Times, _ReadOnly, admin.TabularInline):
    model = Token
    fields = ("jti", "credits", "issued_at", "expires_at", "revoked_at")
    readonly_fields = fields


@admin.register(Account)
class AccountAdmin(_Times, _ReadOnly, admin.ModelAdmin):
    list_display = ("email", "balance", "token_count", "created_at")
    search_fields = ("email",)
    list_filter = (("created", admin.DateFieldListFilter),)
    date_hierarchy = "created"
    fields = ("email", "balance", "created_at", "ledger_links")
    readonly_fields = fields
    inlines = [TokenInline, CreditEntryInline]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).annotate(token_total=Count("tokens"))

    @admin.display(description="tokens", ordering="token_total")
    def token_count(self, account: Account) -> int:
        return account.token_total

    @admin.display(description="ledger")
    def ledger_links(self, account: Account) -> str:
        entries = reverse("admin:accounts_creditentry_changelist")
        add = reverse("admin:accounts_creditentry_add")
        return format_html(
            '<a href="{}?account__id__exact={}">every entry</a> · <a href="{}?account={}">grant or adjust credits</a>',
            entries,
            account.pk,
            add,
            account.pk,
        )


@admin.register(Token)
class TokenAdmin(_Times, _ReadOnly, admin.ModelAdmin):
    list_display = ("jti", "account", "credits", "issued_at", "expires_at", "revoked_at")
    search_fields = ("account__email", "jti")
    list_filter = (
        ("revoked", admin.EmptyFieldListFilter),
        ("issued", admin.DateFieldListFilter),
        ("expires", admin.DateFieldListFilter),
    )
    date_hierarchy = "issued"
    list_select_related = ("account",)
    fields = ("jti", "account", "credits", "issued_at", "expires_at", "revoked_at")
    readonly_fields = fields
    actions = ["revoke"]

    def has_revoke_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("accounts.change_token")

    @admin.action(description="Revoke the selected tokens", permissions=["revoke"])
    def revoke(self, request: HttpRequest, queryset: QuerySet) -> None:
        tokens = list(queryset)
        for token in tokens:
            token_revoke(token=token)
            log_action(request, token, "Revoked")
        self.message_user(request, f"Revoked {len(tokens)} token(s).", messages.SUCCESS)


class CreditEntryForm(forms.ModelForm):
    kind = forms.ChoiceField(
        choices=[
            (CreditEntry.Kind.GRANT, "grant (adds credits)"),
            (CreditEntry.Kind.ADJUST, "adjust (adds or takes credits)"),
        ]
    )

    class Meta:
        model = CreditEntry
        fields = ("account", "kind", "amount", "note")

    def clean(self) -> dict:
        data = super().clean()
        account, kind, amount = data.get("account"), data.get("kind"), data.get("amount")
        if amount is None or account is None:
            return data
        if amount == 0:
            self.add_error("amount", "A ledger entry changes the balance: not 0.")
        elif kind == CreditEntry.Kind.GRANT and amount < 0:
            self.add_error("amount", "A grant adds credits; take credits with an adjustment.")
        elif amount < 0 and account.balance + amount < 0:
            self.add_error("amount", f"{account.email} has only {account.balance} credits.")
        return data


def _cell(text: str) -> str:
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


@admin.register(CreditEntry)
class CreditEntryAdmin(admin.ModelAdmin):
    """Who spent what, when, on which daemon."""

    form = CreditEntryForm
    list_display = ("created_at", "account", "kind", "amount", "subject", "token", "note")
    list_filter = ("kind", ("created", admin.DateFieldListFilter))
    search_fields = ("account__email", "subject", "note", "token__jti")
    date_hierarchy = "created"
    list_select_related = ("account", "token")
    autocomplete_fields = ("account",)
    change_list_template = "admin/accounts/creditentry/change_list.html"

    @admin.display(description="created", ordering="created")
    def created_at(self, entry: CreditEntry) -> str:
        return when(entry.created)

    def get_urls(self) -> list:
        export = path("export.csv", self.admin_site.admin_view(self.export_view), name="accounts_creditentry_export")
        return [export, *super().get_urls()]

    def _filtered(self, request: HttpRequest) -> QuerySet:
        # The changelist's own filters, search and date drill-down: the same rows it shows.
        return self.get_changelist_instance(request).get_queryset(request)

    def changelist_view(self, request: HttpRequest, extra_context=None):
        response = super().changelist_view(request, extra_context)
        context = getattr(response, "context_data", None)
        if context and "cl" in context:
            context["ledger_sums"] = (
                context["cl"]
                .queryset.order_by()
                .aggregate(
                    entries=Count("pk"),
                    total=Sum("amount"),
                    granted=Sum("amount", filter=Q(amount__gt=0)),
                    taken=Sum("amount", filter=Q(amount__lt=0)),
                )
            )
        return response

    def export_view(self, request: HttpRequest) -> HttpResponse:
        """The filtered ledger as CSV (the changelist's query string applies)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        rows = self._filtered(request).select_related("account", "token").order_by("created", "pk")

        class Echo:
            def write(self, value: str) -> str:
                return value

        writer = csv.writer(Echo())
        header = ["created", "account", "kind", "amount", "subject", "token", "note"]

        def lines():
            yield writer.writerow(header)
            for e in rows.iterator():
                # A leading = + - @ would be a formula in a spreadsheet: quote it as text.
                yield writer.writerow(
                    [
                        e.created.isoformat(),
                        _cell(e.account.email),
                        e.kind,
                        e.amount,
                        _cell(e.subject),
                        e.token.jti if e.token else "",
                        _cell(e.note),
                    ]
                )

        response = StreamingHttpResponse(lines(), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = 'attachment; filename="ledger.csv"'
        return response

    def get_readonly_fields(self, request: HttpRequest, obj=None) -> tuple:
        if obj is None:
            return ()
        return ("created", "account", "kind", "amount", "subject", "token", "note")

    def get_fields(self, request: HttpRequest, obj=None) -> tuple:
        if obj is None:
            return ("account", "kind", "amount", "note")
        return ("created", "account", "kind", "amount", "subject", "token", "note")

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        # The ledger is append-only, superusers included: an adjustment corrects it.
        return False

    def get_actions(self, request: HttpRequest) -> dict:
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    def save_model(self, request: HttpRequest, obj: CreditEntry, form: forms.Form, change: bool) -> None:
        # Through the service, so the balance and the ledger change together.
        note = " - ".join(filter(None, [obj.note, f"by {request.user.get_username()} in the admin"]))
        entry = credits_grant(account=obj.account, amount=obj.amount, kind=obj.kind, note=note)
        obj.pk, obj.created, obj.note = entry.pk, entry.created, entry.note
        obj._state.adding = False
