"""A separate process that spends credits, for the concurrency tests.

    python -m tests.accounts.spend_worker setup EMAIL CREDITS
    python -m tests.accounts.spend_worker spend EMAIL THREADS TIMES AMOUNT   # prints what it spent
    python -m tests.accounts.spend_worker report EMAIL                # balance and ledger sum

DJANGO_SETTINGS_MODULE, DATABASE_URL and HERDER_DATA_DIR come from the environment.
`spend` prints "ready" and, when HERDER_TEST_GO names a file, waits for it to
exist before spending, so that all workers start together.
"""

import json
import os
import sys
import threading
import time


def main(argv: list[str]) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "herder.settings")
    import django

    django.setup()
    from accounts.models import Account, CreditEntry
    from accounts.services import account_balance, account_ledger_sum, credits_spend, token_mint

    command, email, *rest = argv
    if command == "setup":
        token_mint(email=email, credits=int(rest[0]))
    elif command == "spend":
        from django.db import connections

        account = Account.objects.get(email=email)
        threads, times, amount = int(rest[0]), int(rest[1]), int(rest[2])
        spent, errors = [], []
        start = threading.Barrier(threads)

        def spender() -> None:
            try:
                start.wait()
                subject = f"worker-{os.getpid()}-{threading.get_ident()}"
                spent.append(sum(credits_spend(account=account, amount=amount, subject=subject) for _ in range(times)))
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(repr(exc))
            finally:
                connections.close_all()

        pool = [threading.Thread(target=spender) for _ in range(threads)]
        print("ready", flush=True)
        go = os.environ.get("HERDER_TEST_GO")
        while go and not os.path.exists(go):
            time.sleep(0.002)
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        if errors:
            sys.exit("\n".join(errors))
        print(sum(spent))
    elif command == "report":
        account = Account.objects.get(email=email)
        print(
            json.dumps(
                {
                    "balance": account_balance(account),
                    "ledger": account_ledger_sum(account),
                    "spends": CreditEntry.objects.filter(account=account, kind="spend").count(),
                }
            )
        )


if __name__ == "__main__":
    main(sys.argv[1:])
