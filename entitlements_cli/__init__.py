"""`entitlements`, the operator CLI (see main.py)."""
