# shellcheck shell=bash
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

# need_rust: husk builds with a Rust toolchain from rustup (rust-version in Cargo.toml);
# Debian 12's own rustc (1.63) is too old, so it is the one thing the scripts do not
# install. Fails with how to get it when cargo is missing.
need_rust() {
    if [ -x "$HOME/.cargo/bin/cargo" ]; then PATH=$HOME/.cargo/bin:$PATH; fi
    command -v cargo >/dev/null 2>&1 && return 0
    echo "husk: no cargo: install Rust with rustup (https://rustup.rs: curl --proto '=https' -sSf https://sh.rustup.rs | sh), then run this again" >&2
    exit 1
}
