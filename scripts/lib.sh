# Shared by husk's scripts: small helpers, sourced, not run.

# apt_install PKG...: installs the Debian packages that are missing (one `apt-get update`
# only when something is missing).
apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "husk: installing ${missing[*]}" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

# step MESSAGE: prints a visible step header.
step() {
    printf '\n==> %s\n' "$*" >&2
}
