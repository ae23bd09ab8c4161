"""Generated from protos/entitlements/v1 by scripts/gen_protos.sh; do not edit."""
