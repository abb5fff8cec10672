# Shared helpers for scripts/*. Sourced, not executed.

# Installs Debian packages that are missing (one apt-get run, only when needed).
ensure_apt() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        if [ "$(id -u)" -ne 0 ]; then
            echo "error: missing Debian packages (${missing[*]}); run as root or install them" >&2
            return 1
        fi
        echo "==> apt-get install ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

# Makes sure cargo (and rustfmt/clippy) are on PATH.
ensure_rust() {
    if ! command -v cargo >/dev/null 2>&1; then
        [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
    fi
    if ! command -v cargo >/dev/null 2>&1; then
        echo "error: cargo not found; install Rust with rustup (https://rustup.rs)" >&2
        return 1
    fi
    rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt clippy >/dev/null 2>&1 || true
}

# The packages every build and test needs (the AF_XDP path links libxdp/libbpf
# built by clang; the namespace tests need iproute2, ethtool and nftables;
# bench/compare also needs iptables (iptables-nft, for the kube-proxy
# iptables-mode ruleset), taskset (util-linux) and python3).
# m4 and libpcap-dev: libxdp-sys runs xdp-tools' configure, which needs both.
BUILD_PACKAGES=(build-essential clang llvm libelf-dev zlib1g-dev pkg-config m4 libpcap-dev iproute2 ethtool nftables iptables curl python3 tcpdump iputils-ping util-linux)
