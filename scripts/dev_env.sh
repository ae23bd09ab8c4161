# shellcheck shell=sh
# The development environment of this checkout, in the current shell: `.venv/bin` first on
# PATH (entitlements, entitlements-service, entitlements-gateway, grpcurl, …) and the
# development secrets `make run` wrote to .data/dev.env (ENTITLEMENTS_DATA_DIR/dev.env when
# that is set) exported. Source it; don't run it:
#
#     . scripts/dev_env.sh                 # sh, bash, zsh: from the repository root
#     source /path/to/repo/scripts/dev_env.sh   # bash, zsh: from anywhere
#
# Refuses (status 1, nothing changed) when there is no dev.env yet: run `make run` first.
# `make shell` sources it and starts $SHELL.

if [ -n "${BASH_SOURCE:-}" ]; then
  _ent_script=$BASH_SOURCE
elif [ -n "${ZSH_VERSION:-}" ]; then
  eval '_ent_script=${(%):-%x}'
else
  _ent_script=scripts/dev_env.sh  # POSIX sh cannot tell: the repository root is the cwd
fi

_entitlements_dev_env() {
  _ent_root=$(cd "$(dirname "$_ent_script")/.." 2>/dev/null && pwd) || _ent_root=
  if [ -z "$_ent_root" ] || [ ! -f "$_ent_root/scripts/dev_env.sh" ]; then
    echo "dev_env: source scripts/dev_env.sh from the repository root" >&2
    return 1
  fi
  _ent_data=${ENTITLEMENTS_DATA_DIR:-.data}
  case $_ent_data in
    /*) ;;
    *) _ent_data=$_ent_root/$_ent_data ;;
  esac
  if [ ! -x "$_ent_root/.venv/bin/entitlements" ]; then
    echo "dev_env: $_ent_root/.venv is not installed yet: run \`make install\` (or \`make run\`) first" >&2
    return 1
  fi
  if [ ! -f "$_ent_data/dev.env" ]; then
    echo "dev_env: $_ent_data/dev.env does not exist yet: run \`make run\` first" \
      "(it writes the development secrets there)" >&2
    return 1
  fi
  _ent_names=
  while IFS= read -r _ent_line || [ -n "$_ent_line" ]; do
    case $_ent_line in
      *=*) _ent_key=${_ent_line%%=*} ;;
      *) continue ;;
    esac
    case $_ent_key in
      '' | [0-9]* | *[!A-Za-z0-9_]*) continue ;;
    esac
    export "$_ent_key=${_ent_line#*=}"
    _ent_names="$_ent_names $_ent_key"
  done <"$_ent_data/dev.env"
  case ":$PATH:" in
    *":$_ent_root/.venv/bin:"*) ;;
    *) PATH=$_ent_root/.venv/bin:$PATH ;;
  esac
  export PATH
  hash -r 2>/dev/null || true
  echo "dev_env: $_ent_root/.venv/bin on PATH; exported from $_ent_data/dev.env:$_ent_names" >&2
}

_entitlements_dev_env
_ent_status=$?
unset -f _entitlements_dev_env
unset _ent_script _ent_root _ent_data _ent_names _ent_line _ent_key
eval "unset _ent_status; [ $_ent_status -eq 0 ]"
