#!/usr/bin/env bash
# The local services Sluice's integration tests and quickstart run against, all real servers on
# 127.0.0.1: ZooKeeper, the Tansu Kafka-wire broker and the s3s-fs S3 server.
#
#   scripts/stack.sh start    install what is missing, start what is not running, wait until ready
#   scripts/stack.sh stop     stop exactly the processes `start` started (pid files + cmdline check)
#   scripts/stack.sh status   say what runs and whether it answers (exit 0 only if all are healthy)
#   scripts/stack.sh env      print the `export` lines the tests and the quickstart read
#   scripts/stack.sh reset    stop, then delete the state dir (ZooKeeper data, broker db, S3 data)
#   scripts/stack.sh test-tools  install what the tests use besides the servers, if missing:
#                             promtool (Debian's prometheus package), headless chromium,
#                             stunnel4 and openssl; ansible-core and ansible-lint (from PyPI,
#                             pinned in ansible/requirements.txt) into a virtualenv in the tools dir
#
# A fresh machine (and CI) starts bare, so `start` installs everything itself: ZooKeeper from
# Debian's package, Tansu and s3s-fs with `cargo install` into a tools dir that outlives the
# checkout (compiling them takes minutes, once). Readiness is never a fixed sleep: each server is
# probed over its own protocol until it answers or a deadline passes.
#
# Settings (environment):
#   SLUICE_STACK_DIR      state, logs, pid files          (default: <repo>/.stack)
#   SLUICE_TOOLS_DIR      cargo install root               (default: ~/.cache/sluice/tools)
#   SLUICE_ZK_PORT        ZooKeeper client port            (default: 22181)
#   SLUICE_KAFKA_PORT     Tansu broker port                (default: 29092)
#   SLUICE_S3_PORT        s3s-fs port                      (default: 29000)
#   SLUICE_KAFKA_STORAGE  sqlite | memory                  (default: sqlite; memory is faster but
#                         reports wrong high watermarks at the tail, see docs/performance.md)
#   SLUICE_STACK_TIMEOUT  readiness deadline per server, s (default: 90)
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname -- "$SCRIPT_DIR")

STACK_DIR=${SLUICE_STACK_DIR:-$REPO_DIR/.stack}
TOOLS_DIR=${SLUICE_TOOLS_DIR:-$HOME/.cache/sluice/tools}
ZK_PORT=${SLUICE_ZK_PORT:-22181}
KAFKA_PORT=${SLUICE_KAFKA_PORT:-29092}
S3_PORT=${SLUICE_S3_PORT:-29000}
KAFKA_STORAGE=${SLUICE_KAFKA_STORAGE:-sqlite}
READY_TIMEOUT=${SLUICE_STACK_TIMEOUT:-90}

readonly HOST=127.0.0.1
readonly S3_BUCKET=sluice
readonly S3_ACCESS_KEY=sluice
readonly S3_SECRET_KEY=sluice-secret

readonly TANSU_VERSION=0.6.0
readonly TANSU_FEATURES=dynostore,libsql
readonly S3S_VERSION=0.14.1
readonly S3S_FEATURES=binary
# A cargo install of tansu takes ~8 min on 2 cores; waiting for one already running (another
# checkout, or started by hand) beats compiling the same thing twice side by side.
readonly INSTALL_WAIT=3600

readonly ZK_JAR=/usr/share/java/zookeeper.jar
# zookeeper.jar's manifest Class-Path brings its dependencies (netty, jetty, slf4j-api, ...) but
# no SLF4J binding, so without these two the server logs nothing at all. Both come with the
# package's dependencies (libslf4j-java, liblog4j1.2-java).
readonly ZK_LOG_JARS=/usr/share/java/slf4j-log4j12.jar:/usr/share/java/log4j-1.2.jar

# Progress goes to stderr so that stdout of `start` is only the export lines:
# eval "$(scripts/stack.sh start)" works.
say() { printf 'stack: %s\n' "$*" >&2; }
warn() { printf 'stack: %s\n' "$*" >&2; }
die() { printf 'stack: error: %s\n' "$*" >&2; exit 1; }

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
    exit 2
}

check_settings() {
    local p
    for p in "$ZK_PORT" "$KAFKA_PORT" "$S3_PORT"; do
        if ! [[ $p =~ ^[0-9]+$ ]] || ((p < 1 || p > 65535)); then
            die "bad port '$p'"
        fi
    done
    [[ $ZK_PORT != "$KAFKA_PORT" && $ZK_PORT != "$S3_PORT" && $KAFKA_PORT != "$S3_PORT" ]] ||
        die "ZooKeeper, broker and S3 ports must differ ($ZK_PORT, $KAFKA_PORT, $S3_PORT)"
    [[ $READY_TIMEOUT =~ ^[0-9]+$ ]] || die "bad SLUICE_STACK_TIMEOUT '$READY_TIMEOUT'"
    case $KAFKA_STORAGE in
        sqlite | memory) ;;
        *) die "SLUICE_KAFKA_STORAGE must be sqlite or memory, not '$KAFKA_STORAGE'" ;;
    esac
}

# Absolute paths, because the servers run with other working directories and pid-file checks
# compare command lines literally. Only called by commands that may create the state dir.
init_dirs() {
    mkdir -p "$STACK_DIR"
    STACK_DIR=$(cd -- "$STACK_DIR" && pwd)
    # `reset` deletes the state dir only when it carries this marker, so a mistyped
    # SLUICE_STACK_DIR can never make it wipe someone else's directory.
    touch "$STACK_DIR/.sluice-stack"
    mkdir -p "$STACK_DIR/run" "$STACK_DIR/logs"
    set_paths
}

set_paths() {
    RUN_DIR=$STACK_DIR/run
    LOG_DIR=$STACK_DIR/logs
    ZK_CONF_DIR=$STACK_DIR/zookeeper/conf
    ZK_DATA_DIR=$STACK_DIR/zookeeper/data
    TANSU_DIR=$STACK_DIR/tansu
    S3_DATA_DIR=$STACK_DIR/s3
    TANSU_BIN=$TOOLS_DIR/bin/tansu
    S3S_BIN=$TOOLS_DIR/bin/s3s-fs
}

# Serialise start/stop/reset of one state dir: two test runs starting the stack at once must not
# both launch a broker on the same port.
lock_stack() {
    exec {STACK_LOCK_FD}>"$STACK_DIR/.lock"
    flock -w "$INSTALL_WAIT" "$STACK_LOCK_FD" || die "could not lock $STACK_DIR/.lock"
}

# ---------------------------------------------------------------------------------------------
# Installing

as_root() {
    if ((EUID == 0)); then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

# The telemetry tests judge the metrics and alert rules with promtool and load the dashboard in a
# real browser; the Kafka security test puts stunnel (TLS) in front of the broker, which cannot
# serve TLS itself, and makes its certificates with openssl. None is sure to be on a fresh machine.
cmd_test_tools() {
    ensure_ansible
    local missing=()
    command -v promtool >/dev/null || missing+=(prometheus)
    command -v chromium >/dev/null || missing+=(chromium)
    command -v stunnel4 >/dev/null || missing+=(stunnel4)
    command -v openssl >/dev/null || missing+=(openssl)
    ((${#missing[@]} == 0)) && return 0
    say "installing ${missing[*]} from Debian's packages (apt-get; a minute or two)"
    as_root apt-get update -q
    # The recommended extras (fonts beyond the default, the node exporter) are not needed.
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    command -v promtool >/dev/null || die "apt-get installed prometheus but promtool is not on PATH"
    command -v chromium >/dev/null || die "apt-get installed chromium but it is not on PATH"
    command -v stunnel4 >/dev/null || die "apt-get installed stunnel4 but it is not on PATH"
}

# The Ansible tests run the playbooks of ansible/ with the versions its requirements.txt pins,
# in a virtualenv of their own (never the system's Python packages). A copy of the requirements
# marks a finished install; a changed pin installs afresh.
ensure_ansible() {
    local venv=$TOOLS_DIR/ansible req=$REPO_DIR/ansible/requirements.txt
    if [[ -x $venv/bin/ansible-playbook ]] && cmp -s "$req" "$venv/requirements.txt"; then
        return 0
    fi
    command -v python3 >/dev/null || die "python3 is needed to install Ansible"
    say "installing ansible-core and ansible-lint from PyPI into $venv (a minute or two)"
    rm -rf -- "$venv"
    python3 -m venv "$venv" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$req" ||
        die "pip could not install $req"
    cp -- "$req" "$venv/requirements.txt"
}

# Sluice's Kafka client is librdkafka built with TLS: its build finds the system's OpenSSL with
# pkg-config. Both come from Debian's packages; a bare machine may lack them.
ensure_build_deps() {
    command -v pkg-config >/dev/null && pkg-config --exists openssl && return 0
    say "installing pkg-config and libssl-dev from Debian's packages (the Kafka client's TLS)"
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends pkg-config libssl-dev
    pkg-config --exists openssl || die "apt-get installed libssl-dev but pkg-config does not find openssl"
}

ensure_zookeeper() {
    if [[ -f $ZK_JAR ]] && command -v java >/dev/null; then
        return 0
    fi
    say "installing ZooKeeper from Debian's 'zookeeper' package (apt-get; takes a minute or two)"
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q zookeeper
    [[ -f $ZK_JAR ]] || die "apt-get installed zookeeper but $ZK_JAR is still missing"
}

# True while some process is a `cargo install <crate> ... --root <TOOLS_DIR>`: an install started
# outside this script (by hand, by a setup step) that we should wait for rather than duplicate.
foreign_install_running() {
    local crate=$1 f cmd
    for f in /proc/[0-9]*/cmdline; do
        cmd=$(tr '\0' ' ' 2>/dev/null <"$f") || continue
        [[ $cmd == *cargo* && $cmd == *" install "* && $cmd == *" $crate "* &&
            $cmd == *"--root $TOOLS_DIR "* ]] && return 0
    done
    return 1
}

# cargo install CRATE VERSION FEATURES into TOOLS_DIR unless TOOLS_DIR/bin/BIN exists.
ensure_cargo_tool() {
    local crate=$1 version=$2 features=$3 bin=$TOOLS_DIR/bin/$1
    [[ -x $bin ]] && return 0
    command -v cargo >/dev/null || die "cargo is needed to install $crate (install Rust first)"
    mkdir -p "$TOOLS_DIR/logs"

    # Installs of several checkouts share TOOLS_DIR: one compiles, the others wait for it.
    local lock_fd
    exec {lock_fd}>"$TOOLS_DIR/.install-$crate.lock"
    if ! flock -n "$lock_fd"; then
        say "another stack.sh is installing $crate into $TOOLS_DIR; waiting for it"
        flock -w "$INSTALL_WAIT" "$lock_fd" || die "gave up waiting for the $crate install"
    fi
    if foreign_install_running "$crate"; then
        say "a 'cargo install $crate' into $TOOLS_DIR is already running; waiting for it"
        local deadline=$((SECONDS + INSTALL_WAIT))
        while foreign_install_running "$crate"; do
            ((SECONDS < deadline)) || die "gave up waiting for the running $crate install"
            sleep 5
        done
    fi
    if [[ -x $bin ]]; then
        exec {lock_fd}>&-
        return 0
    fi

    local log=$TOOLS_DIR/logs/$crate-install.log start=$SECONDS
    local args=(install "$crate" --version "$version" --features "$features" --root "$TOOLS_DIR")
    say "installing $crate $version with cargo into $TOOLS_DIR (compiles from source: takes minutes, once; log: $log)"
    # --locked builds the dependency versions the crate was released and tested with.
    if ! cargo "${args[@]}" --locked >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        warn "cargo install $crate --locked failed; retrying without --locked"
        cargo "${args[@]}" >>"$log" 2>&1 || { tail -n 40 "$log" >&2; die "could not install $crate (log: $log)"; }
    fi
    exec {lock_fd}>&-
    [[ -x $bin ]] || die "cargo install $crate finished but $bin is missing"
    say "installed $crate in $((SECONDS - start)) s"
}

install_all() {
    # Absolute, because it is matched against other processes' command lines.
    mkdir -p "$TOOLS_DIR"
    TOOLS_DIR=$(cd -- "$TOOLS_DIR" && pwd)
    set_paths
    ensure_build_deps
    ensure_zookeeper
    # One after the other: on 2 cores two cargo installs side by side are slower than in turn.
    ensure_cargo_tool tansu "$TANSU_VERSION" "$TANSU_FEATURES"
    ensure_cargo_tool s3s-fs "$S3S_VERSION" "$S3S_FEATURES"
}

# ---------------------------------------------------------------------------------------------
# Readiness probes: each asks the server over its own protocol and fails fast when nothing
# listens (a refused /dev/tcp connection only fails the subshell, never the script).

zk_ready() {
    local reply
    # ZooKeeper answers `ruok` with `imok`; read exactly 4 bytes with a timeout because early in
    # startup it can answer and keep the connection open, which would hang a read-to-EOF.
    reply=$( (exec 3<>"/dev/tcp/$HOST/$ZK_PORT" && printf ruok >&3 &&
        read -r -t 3 -n 4 r <&3 && printf %s "$r") 2>/dev/null) || return 1
    [[ $reply == imok ]]
}

kafka_ready() {
    # `tansu topic list` sends a Metadata request over the Kafka protocol and exits 0 on an
    # answer. Against a closed port it retries forever instead of failing, hence the plain TCP
    # check first and the timeout.
    port_taken "$KAFKA_PORT" || return 1
    timeout 10 "$TANSU_BIN" topic list --broker "tcp://$HOST:$KAFKA_PORT" >/dev/null 2>&1
}

s3_ready() {
    local line
    # Any HTTP status line will do (an unsigned request gets an S3 error document): it proves
    # s3s-fs is serving. Plain bash so that curl is not one more thing to install.
    line=$( (exec 3<>"/dev/tcp/$HOST/$S3_PORT" &&
        printf 'GET / HTTP/1.1\r\nHost: %s:%s\r\nConnection: close\r\n\r\n' "$HOST" "$S3_PORT" >&3 &&
        read -r -t 3 l <&3 && printf %s "$l") 2>/dev/null) || return 1
    [[ $line == HTTP/* ]]
}

# True if anything at all accepts connections on the port (to refuse to start a second server
# on a port someone else already holds).
port_taken() {
    (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null
}

# ---------------------------------------------------------------------------------------------
# Processes. RUN_DIR/NAME.pid holds the pid, RUN_DIR/NAME.cmd the command line it was started
# with; a pid counts as ours only while /proc/PID/cmdline still contains that command line, so a
# recycled pid is never signalled.

pid_of() {
    local name=$1 pid
    [[ -f $RUN_DIR/$name.pid && -f $RUN_DIR/$name.cmd ]] || return 1
    pid=$(<"$RUN_DIR/$name.pid")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    printf '%s' "$pid"
}

is_ours() {
    local name=$1 pid=$2 cmd want
    want=$(<"$RUN_DIR/$name.cmd")
    # A zombie or a gone process has an empty cmdline, so this is also the liveness test.
    cmd=$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline") || return 1
    [[ -n $cmd && $cmd == *"$want "* ]]
}

# running NAME: prints the pid and succeeds if our process NAME is alive.
running() {
    local pid
    pid=$(pid_of "$1") || return 1
    is_ours "$1" "$pid" || return 1
    printf '%s' "$pid"
}

# launch NAME WORKDIR CMD...: start CMD in the background, detached from this shell's session so
# it survives the caller (and a Ctrl-C there), stdout+stderr appended to LOG_DIR/NAME.log.
launch() {
    local name=$1 workdir=$2 log=$LOG_DIR/$1.log pid
    shift 2
    printf '\n===== %s: starting %s\n' "$(date -u +%FT%TZ)" "$*" >>"$log"
    # In a script without job control a background child is never a process-group leader, so
    # setsid does not fork again and $! is the server's own pid (setsid and nohup exec into it).
    # The child must not inherit the stack lock, or the server would hold it for its lifetime
    # and every later start/stop would block on it.
    (
        exec {STACK_LOCK_FD}>&-
        cd -- "$workdir" && exec setsid nohup "$@" >>"$log" 2>&1 </dev/null
    ) &
    pid=$!
    printf '%s' "$*" >"$RUN_DIR/$name.cmd"
    printf '%s\n' "$pid" >"$RUN_DIR/$name.pid"
}

# alive PID: the process exists and has not exited (a zombie has). Used while a server starts:
# until its subshell has exec'd, its cmdline is still this script's, so is_ours would report a
# healthy server as gone; the pid was launched a moment ago and cannot have been recycled.
alive() {
    local state
    state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $state && $state != Z ]]
}

# wait_ready NAME PROBE: poll PROBE until it succeeds; fail at once if the process died, or at the
# deadline, showing the end of the server's log either way.
wait_ready() {
    local name=$1 probe=$2 pid deadline=$((SECONDS + READY_TIMEOUT)) start=$SECONDS
    pid=$(pid_of "$name") || die "$name: no pid file"
    while ! "$probe"; do
        if ! alive "$pid"; then
            warn "$name (pid $pid) exited during startup; last lines of $LOG_DIR/$name.log:"
            tail -n 40 "$LOG_DIR/$name.log" >&2 || true
            rm -f "$RUN_DIR/$name.pid" "$RUN_DIR/$name.cmd"
            die "$name failed to start"
        fi
        if ((SECONDS >= deadline)); then
            warn "$name (pid $pid) not ready after ${READY_TIMEOUT}s; last lines of $LOG_DIR/$name.log:"
            tail -n 40 "$LOG_DIR/$name.log" >&2 || true
            die "$name did not become ready (still running as pid $pid; 'scripts/stack.sh stop' ends it)"
        fi
        sleep 0.2
    done
    say "$name ready (pid $pid, $((SECONDS - start)) s)"
}

# start_service NAME PORT PROBE STARTER: idempotent start of one server.
start_service() {
    local name=$1 port=$2 probe=$3 starter=$4 pid
    if pid=$(running "$name"); then
        if "$probe"; then
            say "$name already running (pid $pid)"
            return 0
        fi
        # Ours but not answering yet: most likely still starting (another `start`), so wait.
        wait_ready "$name" "$probe"
        return 0
    fi
    rm -f "$RUN_DIR/$name.pid" "$RUN_DIR/$name.cmd"
    if port_taken "$port"; then
        die "$name: port $HOST:$port is already in use by a process this script did not start; stop it or set another port"
    fi
    "$starter"
    wait_ready "$name" "$probe"
}

stop_service() {
    local name=$1 pid deadline
    if ! pid=$(pid_of "$name"); then
        rm -f "$RUN_DIR/$name.pid" "$RUN_DIR/$name.cmd"
        say "$name not running"
        return 0
    fi
    if ! is_ours "$name" "$pid"; then
        say "$name not running (stale pid file for pid $pid removed; that pid was not signalled)"
        rm -f "$RUN_DIR/$name.pid" "$RUN_DIR/$name.cmd"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + 30))
    while is_ours "$name" "$pid" && ((SECONDS < deadline)); do
        sleep 0.2
    done
    if is_ours "$name" "$pid"; then
        warn "$name (pid $pid) ignored SIGTERM for 30 s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        deadline=$((SECONDS + 10))
        while is_ours "$name" "$pid" && ((SECONDS < deadline)); do
            sleep 0.2
        done
        is_ours "$name" "$pid" && die "$name (pid $pid) survived SIGKILL"
    fi
    rm -f "$RUN_DIR/$name.pid" "$RUN_DIR/$name.cmd"
    say "$name stopped (pid $pid)"
}

# ---------------------------------------------------------------------------------------------
# The three servers

start_zookeeper() {
    mkdir -p "$ZK_CONF_DIR" "$ZK_DATA_DIR"
    # Rewritten on every start so that a changed port takes effect.
    cat >"$ZK_CONF_DIR/zoo.cfg" <<EOF
# Written by scripts/stack.sh on each start; edits are lost.
# A short tick makes session expiry (checked once per tick) follow the session timeout closely,
# so a crashed worker's partitions are taken over promptly; the minimum session is 2 ticks.
tickTime=500
dataDir=$ZK_DATA_DIR
clientPort=$ZK_PORT
clientPortAddress=$HOST
# The AdminServer would open a Jetty port (8080) on all interfaces.
admin.enableServer=false
4lw.commands.whitelist=ruok,stat,mntr
# Sluice's sessions are up to 60 s; the default cap is 20 ticks = 40 s.
maxSessionTimeout=120000
# Keep the data dir small across long-lived dev stacks.
autopurge.snapRetainCount=3
autopurge.purgeInterval=1
EOF
    # The conf dir is first on the classpath, so log4j finds this file; console output goes to
    # the log file launch() redirects to.
    cat >"$ZK_CONF_DIR/log4j.properties" <<'EOF'
log4j.rootLogger=INFO, CONSOLE
log4j.appender.CONSOLE=org.apache.log4j.ConsoleAppender
log4j.appender.CONSOLE.layout=org.apache.log4j.PatternLayout
log4j.appender.CONSOLE.layout.ConversionPattern=%d{ISO8601} %-5p [%t:%C{1}@%L] - %m%n
EOF
    launch zookeeper "$STACK_DIR/zookeeper" java -Xmx512m \
        -cp "$ZK_CONF_DIR:$ZK_JAR:$ZK_LOG_JARS" \
        org.apache.zookeeper.server.quorum.QuorumPeerMain "$ZK_CONF_DIR/zoo.cfg"
}

start_tansu() {
    local engine
    mkdir -p "$TANSU_DIR"
    case $KAFKA_STORAGE in
        # Relative path: Tansu's sqlite URL is a file in its working directory, TANSU_DIR.
        sqlite) engine=sqlite://tansu.db ;;
        memory) engine=memory://tansu/ ;;
    esac
    launch tansu "$TANSU_DIR" "$TANSU_BIN" broker \
        --listener-url "tcp://$HOST:$KAFKA_PORT" \
        --advertised-listener-url "tcp://$HOST:$KAFKA_PORT" \
        --storage-engine "$engine"
}

start_s3() {
    # s3s-fs serves each directory under its root as a bucket.
    mkdir -p "$S3_DATA_DIR/$S3_BUCKET"
    launch s3s-fs "$S3_DATA_DIR" "$S3S_BIN" --host "$HOST" --port "$S3_PORT" \
        --access-key "$S3_ACCESS_KEY" --secret-key "$S3_SECRET_KEY" "$S3_DATA_DIR"
}

# ---------------------------------------------------------------------------------------------
# Commands

print_env() {
    cat <<EOF
export SLUICE_ZK=$HOST:$ZK_PORT
export SLUICE_KAFKA=$HOST:$KAFKA_PORT
export SLUICE_S3_ENDPOINT=http://$HOST:$S3_PORT
export SLUICE_S3_BUCKET=$S3_BUCKET
export SLUICE_S3_ACCESS_KEY=$S3_ACCESS_KEY
export SLUICE_S3_SECRET_KEY=$S3_SECRET_KEY
export SLUICE_ANSIBLE_VENV=$TOOLS_DIR/ansible
EOF
}

cmd_start() {
    init_dirs
    lock_stack
    install_all
    start_service zookeeper "$ZK_PORT" zk_ready start_zookeeper
    start_service tansu "$KAFKA_PORT" kafka_ready start_tansu
    start_service s3s-fs "$S3_PORT" s3_ready start_s3
    say "stack ready (state: $STACK_DIR, broker storage: $KAFKA_STORAGE); eval \"\$(scripts/stack.sh env)\" to use it:"
    print_env
}

cmd_stop() {
    [[ -d $STACK_DIR/run ]] || { say "nothing started from $STACK_DIR"; return 0; }
    STACK_DIR=$(cd -- "$STACK_DIR" && pwd)
    set_paths
    lock_stack
    # Reverse order of start: the broker and S3 do not depend on ZooKeeper, but clients do.
    stop_service s3s-fs
    stop_service tansu
    stop_service zookeeper
}

cmd_status() {
    local name probe pid healthy=0
    if [[ -d $STACK_DIR/run ]]; then
        STACK_DIR=$(cd -- "$STACK_DIR" && pwd)
    fi
    set_paths
    for name in zookeeper tansu s3s-fs; do
        case $name in
            zookeeper) probe=zk_ready ;;
            tansu) probe=kafka_ready ;;
            s3s-fs) probe=s3_ready ;;
        esac
        if pid=$(running "$name"); then
            if "$probe"; then
                printf '%-10s running (pid %s), answering\n' "$name" "$pid"
            else
                printf '%-10s running (pid %s), NOT answering (log: %s)\n' "$name" "$pid" "$LOG_DIR/$name.log"
                healthy=1
            fi
        else
            printf '%-10s stopped\n' "$name"
            healthy=1
        fi
    done
    return "$healthy"
}

cmd_reset() {
    cmd_stop
    [[ -d $STACK_DIR ]] || return 0
    [[ -f $STACK_DIR/.sluice-stack ]] ||
        die "$STACK_DIR has no .sluice-stack marker; not deleting a directory this script did not create"
    rm -rf -- "$STACK_DIR"
    say "deleted $STACK_DIR"
}

main() {
    (($# == 1)) || usage
    check_settings
    case $1 in
        start) cmd_start ;;
        stop) cmd_stop ;;
        status) cmd_status ;;
        env) print_env ;;
        reset) cmd_reset ;;
        test-tools) cmd_test_tools ;;
        -h | --help | help) usage ;;
        *) usage ;;
    esac
}

main "$@"
