"""Nothing one run leaves in a reused container reaches a later run.

Piston's file_persistance test, applied to every kind of object a process can
leave in its container's namespaces. Each row of the table is one kind: its
`leave` program leaves it behind (or shows the kernel refuses it), its `look`
program prints what a run can see of it. Three runs share one container:

  1. look               what a run sees in a container nobody has used
  2. leave, then look   the trace is there (the look can see it) or refused
  3. look               must print exactly what run 1 printed

README, "Controlled minions", lists what is reset and why the rest cannot persist.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from django.test import Client

from minions.models import MinionRun

pytestmark = [pytest.mark.docker, pytest.mark.django_db]

PRELUDE = r'''
import ctypes, errno, fcntl, os, signal, socket, struct, sys, time
libc = ctypes.CDLL(None, use_errno=True)
KEY = 0x48455244  # "HERD"


def err():
    e = ctypes.get_errno()
    return errno.errorcode.get(e, str(e))


def daemon(body):
    """Run body(ready) in a process meant to outlive the run: its own session,
    orphaned, deaf to SIGTERM and SIGHUP. Returns once body called ready()."""
    r, w = os.pipe()
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.close(r)
            for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
                signal.signal(sig, signal.SIG_IGN)
            null = os.open("/dev/null", os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            body(lambda: os.write(w, b"1"))
            while True:
                time.sleep(60)
        os._exit(0)
    os.close(w)
    assert os.read(r, 1) == b"1", "the daemon did not start"


def others():
    """Command lines of the user's processes but this one and its parent."""
    mine = {os.getpid(), os.getppid()}
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/status") as f:
                uid = next(l.split()[1] for l in f if l.startswith("Uid:"))
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode().strip()
        except (OSError, StopIteration):
            continue
        if uid == str(os.getuid()) and int(pid) not in mine and cmd:
            found.append(cmd)
    return sorted(found)
'''


@dataclass(frozen=True)
class Trace:
    name: str
    leave: str
    # The leave program's last line: "left" once the trace is in place, else
    # what the kernel answered.
    says: str
    look: str
    # The kernel refuses the trace: even the leaving run's own look sees nothing new.
    refused: bool = False
    # The reset cannot remove it: the container retires, the next run gets another.
    retires: bool = False


TRACES = [
    Trace(
        "posix_message_queue",
        leave=r"""
libc.mq_open.restype = ctypes.c_int
q = libc.mq_open(b"/herder-leak", os.O_CREAT | os.O_RDWR, 0o666, None)
assert q >= 0, err()
assert libc.mq_send(q, b"secret", 6, 0) == 0, err()
os.close(os.open("/dev/mqueue/herder-leak-2", os.O_CREAT | os.O_RDWR, 0o666))
print("left")
""",
        says="left",
        look=r"""
print(sorted(os.listdir("/dev/mqueue")))
libc.mq_open.restype = ctypes.c_int
q = libc.mq_open(b"/herder-leak", os.O_RDWR | os.O_NONBLOCK)
if q < 0:
    print("mq_open", err())
else:
    buf = ctypes.create_string_buffer(8192)
    n = libc.mq_receive(q, buf, 8192, None)
    print("received", buf.raw[:n] if n >= 0 else err())
""",
    ),
    Trace(
        "sysv_ipc",
        leave=r"""
class Msg(ctypes.Structure):
    _fields_ = [("mtype", ctypes.c_long), ("mtext", ctypes.c_char * 16)]

IPC_CREAT = 0o1000
shm = libc.shmget(KEY, 4096, IPC_CREAT | 0o666)
msg = libc.msgget(KEY, IPC_CREAT | 0o666)
sem = libc.semget(KEY, 1, IPC_CREAT | 0o666)
private = libc.shmget(0, 4096, IPC_CREAT | 0o600)
assert min(shm, msg, sem, private) >= 0, err()
assert libc.msgsnd(msg, ctypes.byref(Msg(1, b"secret")), 6, 0) == 0, err()
libc.shmat.restype = ctypes.c_void_p
at = libc.shmat(shm, None, 0)
ctypes.memmove(at, b"secret", 6)
print("left")
""",
        says="left",
        look=r"""
for kind in ("shm", "msg", "sem"):
    with open(f"/proc/sysvipc/{kind}") as f:
        print(kind, len(f.read().splitlines()) - 1)
print("shmget", "found" if libc.shmget(KEY, 0, 0) >= 0 else err())
print("msgget", "found" if libc.msgget(KEY, 0) >= 0 else err())
print("semget", "found" if libc.semget(KEY, 0, 0) >= 0 else err())
""",
    ),
    Trace(
        "posix_shm_and_named_semaphore",
        leave=r"""
fd = libc.shm_open(b"/herder-leak", os.O_CREAT | os.O_RDWR, 0o666)
assert fd >= 0, err()
os.write(fd, b"secret")
libc.sem_open.restype = ctypes.c_void_p
assert libc.sem_open(b"/herder-leak", os.O_CREAT, 0o666, 3), err()
print("left")
""",
        says="left",
        look=r"""
print(sorted(os.listdir("/dev/shm")))
fd = libc.shm_open(b"/herder-leak", os.O_RDONLY, 0)
print("shm_open", os.read(fd, 16) if fd >= 0 else err())
""",
    ),
    Trace(
        "abstract_and_path_unix_sockets",
        leave=r"""
def serve(ready):
    abstract = socket.socket(socket.AF_UNIX)
    abstract.bind(b"\0herder-leak")
    abstract.listen()
    path = socket.socket(socket.AF_UNIX)
    path.bind("/tmp/herder-leak.sock")
    path.listen()
    dgram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dgram.bind(b"\0herder-leak-dgram")
    ready()
    while True:
        conn, _ = abstract.accept()
        conn.sendall(b"secret")
        conn.close()

daemon(serve)
print("left")
""",
        says="left",
        look=r"""
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(b"\0herder-leak")
    print("connected", s.recv(16))
except OSError as e:
    print("connect", errno.errorcode[e.errno])
with open("/proc/net/unix") as f:
    print("sockets", sorted(l.split()[-1] for l in f.read().splitlines()[1:] if len(l.split()) > 7))
""",
    ),
    Trace(
        "loopback_tcp_and_udp",
        leave=r"""
def serve(ready):
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 4242))
    listener.listen()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 4243))
    ready()
    while True:
        conn, _ = listener.accept()
        conn.sendall(b"secret")
        conn.close()

daemon(serve)
# A connection this side closes first waits in TIME_WAIT, whoever ends.
client = socket.create_connection(("127.0.0.1", 4242))
assert client.recv(16) == b"secret"
client.close()
print("left")
""",
        says="left",
        look=r"""
try:
    s = socket.create_connection(("127.0.0.1", 4242), timeout=2)
    print("connected", s.recv(16))
except OSError as e:
    print("connect", errno.errorcode.get(e.errno, e))
for table in ("tcp", "tcp6", "udp", "udp6"):
    with open(f"/proc/net/{table}") as f:
        print(table, len(f.read().splitlines()) - 1)
""",
        retires=True,
    ),
    Trace(
        "keyrings",
        leave=r"""
SYS = {"x86_64": (248, 249, 250), "aarch64": (217, 218, 219)}[os.uname().machine]
add_key, request_key, keyctl = SYS
answers = []
for ring in (-4, -3, -5):  # the user, session and user-session keyrings
    r = libc.syscall(add_key, b"user", b"herder-leak", b"secret", 6, ring)
    answers.append("added" if r >= 0 else err())
r = libc.syscall(keyctl, 1, b"herder-leak")  # KEYCTL_JOIN_SESSION_KEYRING
answers.append("joined" if r >= 0 else err())
print("refused:", *answers)
""",
        says="refused: EPERM EPERM EPERM EPERM",
        look=r"""
SYS = {"x86_64": (248, 249, 250), "aarch64": (217, 218, 219)}[os.uname().machine]
add_key, request_key, keyctl = SYS
r = libc.syscall(request_key, b"user", b"herder-leak", None, 0)
print("request_key", r if r >= 0 else err())
r = libc.syscall(keyctl, 0, -4, 0)  # KEYCTL_GET_KEYRING_ID of the user keyring
print("user keyring", r if r >= 0 else err())
try:
    print("/proc/keys", open("/proc/keys").read())
except OSError as e:
    print("/proc/keys", errno.errorcode[e.errno])
""",
        refused=True,
    ),
    Trace(
        "file_locks",
        leave=r"""
def hold(ready):
    fd = os.open("/etc/passwd", os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    other = os.open("/etc/group", os.O_RDONLY)
    fcntl.lockf(other, fcntl.LOCK_SH)
    ready()

daemon(hold)
print("left")
""",
        says="left",
        look=r"""
fd = os.open("/etc/passwd", os.O_RDONLY)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    print("flock /etc/passwd free")
except OSError as e:
    print("flock /etc/passwd", errno.errorcode[e.errno])
other = os.open("/etc/group", os.O_RDONLY)
probe = struct.pack("hhqqi", fcntl.F_WRLCK, 0, 0, 0, 0)
kind = struct.unpack("hhqqi", fcntl.fcntl(other, fcntl.F_GETLK, probe))[0]
print("lock on /etc/group", "none" if kind == fcntl.F_UNLCK else kind)
""",
    ),
    Trace(
        "processes_timers_and_children",
        leave=r"""
import subprocess

def linger(ready):
    signal.setitimer(signal.ITIMER_REAL, 1, 1)
    signal.signal(signal.SIGALRM, lambda *_: None)
    subprocess.Popen(["sleep", "300"], start_new_session=True)
    os.nice(5)
    ready()

daemon(linger)
subprocess.Popen(["sh", "-c", "trap '' TERM HUP; while :; do sleep 1; done"], start_new_session=True,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print("left")
""",
        says="left",
        look=r"""
print("others", others())
""",
    ),
    Trace(
        "files_in_every_writable_place",
        leave=r"""
wrote = set()
for top in ("/", "/sys/fs/cgroup"):
    for folder, dirs, _ in os.walk(top):
        if top == "/" and folder == "/":
            dirs[:] = [d for d in dirs if d not in ("proc", "sys")]
        try:
            fd = os.open(os.path.join(folder, ".herder-leak"), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except OSError:
            continue
        wrote.add(folder)
        try:
            os.write(fd, b"secret")
        except OSError:
            pass  # a POSIX message queue is no file to write
        os.close(fd)
# What the reset must undo: folders it cannot enter, fifos, links, deep trees.
for place in ("/minion", "/tmp", "/dev/shm"):
    deep = os.path.join(place, ".herder-locked", "deep", "deeper")
    os.makedirs(deep)
    open(os.path.join(deep, "f"), "w").write("secret")
    os.chmod(os.path.join(place, ".herder-locked", "deep"), 0)
    os.chmod(os.path.join(place, ".herder-locked"), 0)
    os.mkfifo(os.path.join(place, ".herder-fifo"))
    os.symlink("/etc/passwd", os.path.join(place, ".herder-link"))
    os.close(os.open(os.path.join(place, ".herder-noperm"), os.O_CREAT | os.O_WRONLY, 0))
os.chmod("/minion/main.py", 0)
print("wrote:", " ".join(sorted(wrote)))
""",
        says="wrote: /dev/mqueue /dev/shm /minion /tmp",
        look=r"""
found = []
for top in ("/", "/sys/fs/cgroup"):
    for folder, dirs, files in os.walk(top):
        if top == "/" and folder == "/":
            dirs[:] = [d for d in dirs if d not in ("proc", "sys")]
        found += [os.path.join(folder, n) for n in dirs + files if n.startswith(".herder-")]
print("found", sorted(found))
for place in ("/minion", "/tmp", "/dev/shm", "/dev/mqueue"):
    print(place, sorted(os.listdir(place)))
""",
    ),
    Trace(
        "attributes_of_the_writable_folders",
        leave=r"""
changed = []
for place in ("/minion", "/tmp", "/dev/shm", "/dev/mqueue"):
    for what, change in (("xattr", lambda: os.setxattr(place, "user.herder-leak", b"secret")),
                         ("mode", lambda: os.chmod(place, 0o700)),
                         ("times", lambda: os.utime(place, (0, 0)))):
        try:
            change()
            changed.append(f"{place}:{what}")
        except OSError:
            pass
print("changed:", *changed)
""",
        says="changed:",
        look=r"""
for place in ("/minion", "/tmp", "/dev/shm", "/dev/mqueue"):
    st = os.stat(place)
    try:
        attrs = os.listxattr(place)
    except OSError as e:
        attrs = errno.errorcode[e.errno]
    print(place, oct(st.st_mode), st.st_uid, attrs)
""",
        refused=True,
    ),
    Trace(
        "terminals",
        leave=r"""
def hold(ready):
    global pty
    pty = os.openpty()
    ready()

daemon(hold)
print("left")
""",
        says="left",
        look=r"""
print(sorted(os.listdir("/dev/pts")))
""",
    ),
    Trace(
        "hostname_and_sysctls",
        leave=r"""
answers = []
answers.append("set" if libc.sethostname(b"herder-leak", 11) == 0 else err())
answers.append("set" if libc.setdomainname(b"herder-leak", 11) == 0 else err())
writable = 0
for folder, _, files in os.walk("/proc/sys"):
    for name in files:
        try:
            os.close(os.open(os.path.join(folder, name), os.O_WRONLY))
            writable += 1
        except OSError:
            pass
print("refused:", *answers, "writable sysctls:", writable)
""",
        says="refused: EPERM EPERM writable sysctls: 0",
        look=r"""
print(socket.gethostname(), open("/proc/sys/kernel/domainname").read().strip())
for name in ("fs/mqueue/msg_max", "fs/mqueue/queues_max", "kernel/shmmax", "kernel/msgmax", "kernel/sem",
             "net/ipv4/ip_local_port_range", "net/ipv4/ping_group_range", "net/core/somaxconn"):
    print(name, open("/proc/sys/" + name).read().split())
""",
        refused=True,
    ),
    Trace(
        "environment_cwd_limits_and_the_runner",
        leave=r"""
import resource
tried = refused = 0
roots = [int(p) for p in filter(str.isdigit, os.listdir("/proc"))
         if os.stat(f"/proc/{p}").st_uid == 0]
for pid in roots:
    for attempt in (lambda: resource.prlimit(pid, resource.RLIMIT_NOFILE, (1, 1)),
                    lambda: os.setpriority(os.PRIO_PROCESS, pid, 19),
                    lambda: os.kill(pid, signal.SIGSTOP),
                    lambda: open(f"/proc/{pid}/oom_score_adj", "w").write("1000"),
                    lambda: open(f"/proc/{pid}/environ", "rb").read(),
                    # The runner's stdin carries the next run's request.
                    lambda: open(f"/proc/{pid}/fd/0", "rb").read(1),
                    lambda: open(f"/proc/{pid}/mem", "rb").read(1)):
        tried += 1
        try:
            attempt()
        except (OSError, ValueError):
            refused += 1
    tried += 1
    refused += libc.ptrace(16, pid, None, None) != 0  # PTRACE_ATTACH
print("refused", "all" if tried == refused and tried > 0 else f"{refused} of {tried}")
""",
        says="refused all",
        look=r"""
import resource
print("cwd", os.getcwd(), "umask", oct(os.umask(0)))
print("ids", os.getuid(), os.getgid(), os.getgroups())
print("nice", os.getpriority(os.PRIO_PROCESS, 0))
print("env", sorted(os.environ.items()))
limits = [n for n in dir(resource) if n.startswith("RLIMIT_")]
print("limits", [(n, resource.getrlimit(getattr(resource, n))) for n in sorted(limits)])
""",
        refused=True,
    ),
    Trace(
        "memory_and_pids_held_by_leftovers",
        leave=r"""
for place, mib in (("/minion", 100), ("/tmp", 50), ("/dev/shm", 50)):
    with open(os.path.join(place, "ballast"), "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(1 << 20))

def hold(ready):
    global ballast
    ballast = bytearray(os.urandom(64 << 20))
    for _ in range(20):
        if os.fork() == 0:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            while True:
                time.sleep(60)
    ready()

daemon(hold)
print("left")
""",
        says="left",
        look=r"""
cg = "/sys/fs/cgroup"
print("pids", open(f"{cg}/pids/pids.current").read().strip())
usage = int(open(f"{cg}/memory/memory.usage_in_bytes").read())
print("memory under 96 MiB", usage < 96 << 20)
""",
    ),
]


def spawn(code: str) -> tuple[dict, MinionRun]:
    answer = Client().post("/minion/v1/spawn", {"env": "python", "main.py": PRELUDE + code})
    assert answer.status_code == 200, answer.content
    return answer.json(), MinionRun.objects.latest("pk")


@pytest.mark.parametrize("trace", TRACES, ids=lambda trace: trace.name)
def test_a_later_run_in_the_same_container_finds_nothing(settings, trace):
    settings.HERDER_MINION_POOL_SIZE = 1
    settings.HERDER_MINION_RUNS_PER_CONTAINER = 10

    before, first = spawn(trace.look)
    during, second = spawn(trace.leave + '\nprint("--- look")\n' + trace.look)
    after, third = spawn(trace.look)

    for result in (before, during, after):
        assert result["ExitCode"] == 0, result
    left, _, seen_during = during["StdOut"].partition("--- look\n")
    assert left.splitlines()[-1] == trace.says, during
    if trace.refused:
        assert seen_during == before["StdOut"], "the leaving run changed what a run sees"
    else:
        assert seen_during != before["StdOut"], "the look cannot see the trace it looks for"
    assert second.container == first.container, "the leaving run did not reuse the container"
    if trace.retires:
        assert third.container != second.container, "a container the reset could not clean served again"
    else:
        assert third.container == second.container, "the container retired: the reset did not hold"
    assert after["StdOut"] == before["StdOut"]


# Every image, in its own shell: write into every folder of the file system
# (but /proc and /sys, whose writable files the table's rows try), then look
# for any of it from the next run.
WRITE_EVERYWHERE = r"""
wrote=""
for d in $(find / -xdev -type d 2>/dev/null) /dev /dev/shm /dev/mqueue /dev/pts /minion /tmp; do
  if ( : > "$d/.herder-leak" ) 2>/dev/null; then
    wrote="$wrote $d"
    echo secret > "$d/.herder-leak" 2>/dev/null
  fi
done
echo "wrote:$wrote"
"""

LOOK_EVERYWHERE = r"""
find / \( -path /proc -o -path /sys \) -prune -o -name '.herder-*' -print 2>/dev/null
ls -A /minion /tmp /dev/shm /dev/mqueue
echo looked
"""


@pytest.mark.parametrize("env", ["python", "node", "ruby", "latex"])
def test_in_every_image_only_the_reset_places_are_writable_and_they_come_back_empty(settings, env):
    settings.HERDER_MINION_POOL_SIZE = 1
    settings.HERDER_MINION_RUNS_PER_CONTAINER = 10

    def spawn_sh(script):
        answer = Client().post("/minion/v1/spawn", {"env": env, "main.sh": script})
        assert answer.status_code == 200, answer.content
        return answer.json(), MinionRun.objects.latest("pk")

    before, first = spawn_sh(LOOK_EVERYWHERE)
    wrote, second = spawn_sh(WRITE_EVERYWHERE)
    after, third = spawn_sh(LOOK_EVERYWHERE)

    # The root file system is read-only: the four folders the reset empties are all there is.
    assert set(wrote["StdOut"].split()) == {"wrote:", "/dev/mqueue", "/dev/shm", "/minion", "/tmp"}, wrote
    assert first.container == second.container == third.container
    assert after["StdOut"] == before["StdOut"]
    assert ".herder" not in after["StdOut"]
