# shellcheck shell=bash
# Sourced by build/boot.sh and build/rootfs.sh (and part of their cache keys).
#
# hostcg_mirrors: sets MIRROR (and SECURITY_MIRROR, possibly empty) from the machine's own apt
#   configuration: /etc/apt/sources.list, sources.list.d/*.list and *.sources, enabled `deb`
#   entries with component main. An entry counts as the Debian archive when apt's downloaded
#   Release file for it says "Origin: Debian" (Label "Debian" for the archive, "Debian-Security"
#   for the security archive); without downloaded lists, when its suite is a Debian suite name.
#   No mirror is written in this repository: without one configured the build stops (exit 1).
# hostcg_apt SUITE DIR: a private apt setup in DIR for the Debian SUITE (SUITE, SUITE-updates,
#   SUITE-security) on those mirrors, verified with the Debian archive keyring; runs its
#   `update` and sets the arrays PAPT_GET and PAPT_CACHE (apt-get / apt-cache with that
#   configuration). The machine's own apt state is neither read nor changed.

hostcg_mirrors() {
  local out
  out=$(python3 - <<'PY'
import glob, os, re

def entries():
    files = ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list"))
    for f in files:
        try:
            lines = open(f).read().splitlines()
        except OSError:
            continue
        for l in lines:
            l = l.split("#", 1)[0].strip()
            m = re.match(r"^deb\s+(\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s*(.*)$", l)
            if m:
                yield m.group(2), [m.group(3)], m.group(4).split()
    for f in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        try:
            text = open(f).read()
        except OSError:
            continue
        for stanza in re.split(r"\n\s*\n", text):
            d = {}
            for l in stanza.splitlines():
                if l.startswith("#") or ":" not in l:
                    continue
                k, v = l.split(":", 1)
                d[k.strip().lower()] = v.strip()
            if "deb" not in d.get("types", "").split():
                continue
            if d.get("enabled", "yes").lower() in ("no", "false", "0"):
                continue
            for uri in d.get("uris", "").split():
                yield uri, d.get("suites", "").split(), d.get("components", "").split()

SUITES = {"oldoldstable", "oldstable", "stable", "testing", "unstable", "sid", "experimental",
          "buster", "bullseye", "bookworm", "trixie", "forky", "duke"}

def release(uri, suite):
    base = re.sub(r"^[a-z+]+://", "", uri.rstrip("/"))
    base = re.sub(r"^[^@/]*@", "", base).replace("/", "_")
    for name in ("InRelease", "Release"):
        p = "/var/lib/apt/lists/%s_dists_%s_%s" % (base, suite.replace("/", "_"), name)
        if os.path.exists(p):
            fields = {}
            for l in open(p, errors="replace"):
                if l.startswith(("Origin:", "Label:")):
                    k, v = l.split(":", 1)
                    fields[k] = v.strip()
                if not l.strip() and fields:
                    break  # end of the first paragraph (after an InRelease's PGP header)
            return fields
    return None

mirror = security = ""
for uri, suites, comps in entries():
    if "main" not in comps:
        continue
    for s in suites:
        rel = release(uri, s)
        plain = s.split("-")[0].split("/")[0]
        if rel is not None:
            if rel.get("Origin") != "Debian":
                continue
            is_sec = rel.get("Label") == "Debian-Security"
        elif plain in SUITES:
            is_sec = s.endswith("-security") or s.endswith("/updates")
        else:
            continue
        if is_sec:
            security = security or uri
        else:
            mirror = mirror or uri
print(mirror)
print(security)
PY
) || return 1
  MIRROR=$(sed -n 1p <<< "$out"); SECURITY_MIRROR=$(sed -n 2p <<< "$out")
  if [ -z "$MIRROR" ]; then
    echo "test-host build: no Debian mirror in this machine's apt configuration" \
         "(/etc/apt/sources.list, /etc/apt/sources.list.d/*.list, *.sources: an enabled 'deb'" \
         "entry of a Debian suite with component main). The images are built only from the" \
         "machine's own mirror: configure one, then run tests/hosts/setup again." >&2
    return 1
  fi
}

hostcg_apt() { # SUITE DIR
  local suite=$1 d=$2 kr=/usr/share/keyrings/debian-archive-keyring.gpg
  [ -n "${MIRROR:-}" ] || hostcg_mirrors || return 1
  [ -r "$kr" ] || { echo "test-host build: $kr missing (apt-get install debian-archive-keyring)" >&2; return 1; }
  mkdir -p "$d/lists/partial" "$d/cache/archives/partial"
  {
    echo "deb [signed-by=$kr] $MIRROR $suite main"
    echo "deb [signed-by=$kr] $MIRROR $suite-updates main"
    [ -z "${SECURITY_MIRROR:-}" ] || echo "deb [signed-by=$kr] $SECURITY_MIRROR $suite-security main"
  } > "$d/sources.list"
  : > "$d/status"
  local o=(-o "Dir::Etc::SourceList=$d/sources.list" -o Dir::Etc::SourceParts=/dev/null
           -o "Dir::State::Lists=$d/lists" -o "Dir::Cache=$d/cache" -o "Dir::State::status=$d/status"
           -o APT::Sandbox::User=root -o Debug::NoLocking=1)
  PAPT_GET=(apt-get "${o[@]}"); PAPT_CACHE=(apt-cache "${o[@]}")
  echo "test-host build: apt lists of $suite from $MIRROR${SECURITY_MIRROR:+ and $SECURITY_MIRROR}" >&2
  "${PAPT_GET[@]}" update -qq || {
    echo "test-host build: apt-get update of $suite from $MIRROR failed (see above): is $suite" \
         "still on this mirror?" >&2
    return 1
  }
}
