"""A one-node SLURM cluster on loopback for the tests (tests/test_slurm.py), from Debian's packages.

`LoopbackSlurm().start()` installs what is missing with apt-get (slurm-wlm, slurmdbd, munge,
mariadb-server), writes `/etc/slurm/slurm.conf`, `slurmdbd.conf` and `gres.conf` (the SLURM tools a
job runs inside it read `/etc/slurm`: the executor plugin's job step drops every `SLURM_*` variable,
`SLURM_CONF` included) and starts, as its own child processes: munged (unless one already serves
the default socket), MariaDB (its own data directory, socket and port), slurmdbd (accounting,
enforced: the plugin checks the account with sacctmgr, the tests read sacct), slurmctld and slurmd.
Everything else lives in a temporary directory; ports are free ones picked at start. `stop()` ends
exactly the processes it started and removes the files it wrote, nothing else; it refuses to
start where a SLURM configuration it did not write exists (a real cluster node).

With `nodes=2` the cluster has a second node, `<host>-2`, whose slurmd runs in a network namespace of its
own (entered with nsenter, so it shares the file system, as a cluster's nodes share theirs): a veth pair
joins it to this machine, each end called `INTERFACE` in its namespace (10.77.0.1 here, 10.77.0.2 there),
so that one GLOO_SOCKET_IFNAME serves the processes of both nodes.

The node has fake GPUs of the model `GPU_MODEL` (GRES whose device files are /dev/null), so the
scheduler checks every `--gpus=<model>:<n>` request, and the accounting records them (AllocTRES).

Run by hand: `python tests/slurm_cluster.py` starts it, prints its start-up times, waits for Ctrl-C.
"""
from __future__ import annotations

import atexit
import os
import shutil
import socket
import signal
import stat
import subprocess
import tempfile
import threading
import time
from pathlib import Path

ETC = Path("/etc/slurm")
MUNGE_SOCKET = Path("/run/munge/munge.socket.2")
MARKER = "# written by tests/slurm_cluster.py (the test suite's loopback SLURM); removed when it stops"
PACKAGES = ("slurm-wlm", "slurmdbd", "munge", "mariadb-server", "mariadb-client")
BINARIES = ("slurmctld", "slurmd", "slurmdbd", "sbatch", "sacct", "sacctmgr", "munged", "mariadbd",
            "mariadb-install-db", "mariadb", "munge", "unmunge")
CLUSTER = "loopback"
ACCOUNT = "test_account"
GPU_PARTITION, CPU_PARTITION, GPU_MODEL = "test_gpu", "test_cpu", "testgpu"
GPUS, CPUS, MEMORY_MB = 4, 8, 16000
NETNS, INTERFACE, ADDRESSES = "loopback-slurm-2", "lsl0", ("10.77.0.1", "10.77.0.2")


class Unavailable(RuntimeError):
    """SLURM cannot be had on this machine (no apt-get, not root, or a foreign configuration)."""


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if not shutil.which(b, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")]


def install() -> float:
    """apt-get install the packages when a binary is missing; seconds spent (0 when nothing was)."""
    if not missing_binaries():
        return 0.0
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise Unavailable(f"SLURM is not installed ({', '.join(missing_binaries())} missing) and apt-get cannot "
                          "install it here (needs root and apt-get)")
    start = time.monotonic()
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"],
                ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]):
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    if missing_binaries():
        raise RuntimeError(f"installed {PACKAGES} but still missing: {missing_binaries()}")
    return time.monotonic() - start


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sbin(name: str) -> str:
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") or name


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


class LoopbackSlurm:
    def __init__(self, nodes: int = 1):
        self.host = subprocess.run(["hostname", "-s"], capture_output=True, text=True, check=True).stdout.strip()
        self.nodes = [self.host, f"{self.host}-2"][:nodes]
        self.root: Path | None = None
        self.procs: dict[str, subprocess.Popen] = {}
        self.written: list[Path] = []
        self.timings: dict[str, float] = {}
        self._sigterm = None

    # ------------------------------------------------------------------ start / stop

    def start(self) -> "LoopbackSlurm":
        if os.geteuid() != 0:
            raise Unavailable("the loopback SLURM runs its daemons as root (jobs run as the submitting user)")
        self.timings["install"] = install()
        for name in ("slurm.conf", "slurmdbd.conf", "gres.conf"):
            path = ETC / name
            if path.exists() and MARKER not in path.read_text(errors="replace"):
                raise Unavailable(f"{path} exists and was not written by this test suite: not touching a real "
                                  "SLURM configuration")
        t0 = time.monotonic()
        self.root = Path(tempfile.mkdtemp(prefix="loopback-slurm-"))
        # the daemons are stopped however this process ends: normally, on an exception, or on SIGTERM
        atexit.register(self.stop)
        if threading.current_thread() is threading.main_thread():
            self._sigterm = signal.signal(signal.SIGTERM, _interrupt)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        self.timings["daemons"] = time.monotonic() - t0
        return self

    def stop(self) -> None:
        """End the daemons this object started (newest first) and remove what it wrote."""
        for name, proc in reversed(list(self.procs.items())):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        self.procs.clear()
        if len(self.nodes) > 1:
            subprocess.run(["ip", "link", "delete", INTERFACE], capture_output=True)
            subprocess.run(["ip", "netns", "delete", NETNS], capture_output=True)
        for path in self.written:
            if path.exists() and MARKER in path.read_text(errors="replace"):
                path.unlink()
        self.written.clear()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None
        if self._sigterm is not None:
            signal.signal(signal.SIGTERM, self._sigterm)
            self._sigterm = None
        atexit.unregister(self.stop)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # ------------------------------------------------------------------ helpers

    def run(self, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        result = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {result.returncode}: {result.stdout}{result.stderr}\n"
                               + self.logs())
        return result

    def logs(self, tail: int = 2500) -> str:
        out = []
        for path in sorted(self.root.glob("*.log")) if self.root else []:
            out.append(f"--- {path.name}\n{path.read_text(errors='replace')[-tail:]}")
        return "\n".join(out)

    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen:
        log = open(self.root / f"{name}.out.log", "wb")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)  # Ctrl-C in the terminal reaches pytest only
        log.close()
        self.procs[name] = proc
        return proc

    def _wait(self, what: str, ready, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited {proc.returncode} while waiting for {what}\n{self.logs()}")
            if ready():
                return
            time.sleep(0.2)
        raise RuntimeError(f"timed out after {timeout} s waiting for {what}\n{self.logs()}")

    def _fake_gpu_devices(self) -> list[str]:
        """GRES of type gpu need device files (a Count alone is reported as 0 GPUs): character devices
        that are /dev/null (made with mknod), or distinct harmless ones where mknod is not allowed."""
        try:
            files = []
            for i in range(GPUS):
                path = self.root / f"fakegpu{i}"
                os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
                files.append(str(path))
            return files
        except OSError:
            return ["/dev/null", "/dev/zero", "/dev/full", "/dev/urandom"][:GPUS]

    @staticmethod
    def _munge_works() -> bool:
        if not MUNGE_SOCKET.exists():
            return False
        cred = subprocess.run(["munge", "-n", "-S", str(MUNGE_SOCKET)], capture_output=True, timeout=10)
        return cred.returncode == 0 and subprocess.run(["unmunge", "-S", str(MUNGE_SOCKET)], input=cred.stdout,
                                                       capture_output=True, timeout=10).returncode == 0

    def _write_etc(self, name: str, text: str, mode: int) -> None:
        ETC.mkdir(parents=True, exist_ok=True)
        path = ETC / name
        path.write_text(f"{MARKER}\n{text}")
        path.chmod(mode)
        self.written.append(path)

    # ------------------------------------------------------------------ the daemons

    def _network(self) -> None:
        """The second node's network namespace and the veth pair that joins it to this machine."""
        subprocess.run(["ip", "netns", "delete", NETNS], capture_output=True)  # a leftover of a killed run
        subprocess.run(["ip", "link", "delete", INTERFACE], capture_output=True)
        inside = ["ip", "netns", "exec", NETNS, "ip"]
        for cmd in (["ip", "netns", "add", NETNS],
                    ["ip", "link", "add", INTERFACE, "type", "veth", "peer", "name", "lsl1"],
                    ["ip", "link", "set", "lsl1", "netns", NETNS],
                    ["ip", "addr", "add", f"{ADDRESSES[0]}/24", "dev", INTERFACE],
                    ["ip", "link", "set", INTERFACE, "up"],
                    [*inside, "link", "set", "lsl1", "name", INTERFACE],
                    [*inside, "addr", "add", f"{ADDRESSES[1]}/24", "dev", INTERFACE],
                    [*inside, "link", "set", INTERFACE, "up"],
                    [*inside, "link", "set", "lo", "up"]):
            self.run(*cmd)

    def _node_lines(self) -> str:
        address = ADDRESSES if len(self.nodes) > 1 else ("127.0.0.1",)
        return "".join(f"NodeName={n} NodeAddr={a} CPUs={CPUS} RealMemory={MEMORY_MB} Gres=gpu:{GPU_MODEL}:{GPUS} "
                       "State=UNKNOWN\n" for n, a in zip(self.nodes, address))

    def _start(self) -> None:
        root = self.root
        if len(self.nodes) > 1:
            self._network()
        for sub in ("state", "spool", "mysql"):
            (root / sub).mkdir()
        ports = {k: free_port() for k in ("ctld", "slurmd", "dbd", "mysql")}
        # munge: the SLURM client tools reach it at its default socket (sacctmgr ignores AuthInfo=socket=);
        # a munged already serving there (the system's) is used as it is, else one is started with a key of its own
        if not self._munge_works():
            MUNGE_SOCKET.parent.mkdir(parents=True, exist_ok=True)
            key = root / "munge.key"
            key.write_bytes(os.urandom(1024))
            key.chmod(0o400)
            self._spawn("munged", [sbin("munged"), "--foreground", "--force", f"--socket={MUNGE_SOCKET}",
                                   f"--key-file={key}", f"--pid-file={root}/munged.pid",
                                   f"--log-file={root}/munged.log", f"--seed-file={root}/munged.seed"])
            self._wait("munged", self._munge_works, 20)

        # MariaDB for slurmdbd: own data directory, socket and port, on 127.0.0.1 only
        t = time.monotonic()
        self.run(sbin("mariadb-install-db"), "--no-defaults", f"--datadir={root}/mysql", "--user=root",
                 "--auth-root-authentication-method=normal", "--skip-test-db", timeout=120)
        mysql_socket = root / "mysqld.sock"
        self._spawn("mariadbd", [sbin("mariadbd"), "--no-defaults", f"--datadir={root}/mysql", "--user=root",
                                 f"--socket={mysql_socket}", f"--port={ports['mysql']}", "--bind-address=127.0.0.1",
                                 f"--pid-file={root}/mysqld.pid", f"--log-error={root}/mysqld.log",
                                 "--innodb-buffer-pool-size=64M", "--innodb-log-file-size=16M", "--skip-log-bin"])
        self._wait("mariadbd", mysql_socket.exists, 60)
        self.run(sbin("mariadb"), "--no-defaults", f"--socket={mysql_socket}", "-u", "root", "-e",
                 "CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm'; CREATE USER 'slurm'@'localhost' IDENTIFIED "
                 "BY 'slurm'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; GRANT ALL ON slurm_acct_db.* TO "
                 "'slurm'@'localhost';")
        self.timings["mariadb"] = time.monotonic() - t

        auth = "AuthType=auth/munge\n"
        self._write_etc("slurmdbd.conf", f"""{auth}DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={ports['dbd']}
SlurmUser=root
LogFile={root}/slurmdbd.log
PidFile={root}/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={ports['mysql']}
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
""", 0o600)
        self._write_etc("slurm.conf", f"""ClusterName={CLUSTER}
SlurmctldHost={self.host}({ADDRESSES[0] if len(self.nodes) > 1 else "127.0.0.1"})
SlurmctldPort={ports['ctld']}
SlurmdPort={ports['slurmd']}
{auth}CryptoType=crypto/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool-%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={ports['dbd']}
AccountingStorageEnforce=associations
AccountingStorageTRES=gres/gpu,gres/gpu:{GPU_MODEL}
AccountingStoreFlags=job_comment
InactiveLimit=0
KillWait=30
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=60
{self._node_lines()}PartitionName={CPU_PARTITION} Nodes={",".join(self.nodes)} Default=YES MaxTime=INFINITE State=UP
PartitionName={GPU_PARTITION} Nodes={",".join(self.nodes)} MaxTime=INFINITE State=UP
""", 0o644)
        devices = self._fake_gpu_devices()
        self._write_etc("gres.conf", "".join(f"NodeName={n} Name=gpu Type={GPU_MODEL} File={f}\n"
                                             for n in self.nodes for f in devices), 0o644)

        t = time.monotonic()
        self._spawn("slurmdbd", [sbin("slurmdbd"), "-D"])
        self._wait("slurmdbd", lambda: self.run("sacctmgr", "-n", "list", "cluster", check=False,
                                                timeout=20).returncode == 0, 60)
        for cmd in (["add", "cluster", CLUSTER], ["add", "account", ACCOUNT, f"Cluster={CLUSTER}"],
                    ["add", "user", "root", f"Account={ACCOUNT}", f"Cluster={CLUSTER}"]):
            self.run("sacctmgr", "-i", *cmd)
        self.timings["slurmdbd"] = time.monotonic() - t

        t = time.monotonic()
        self._spawn("slurmctld", [sbin("slurmctld"), "-D", "-i"])
        self._spawn("slurmd", [sbin("slurmd"), "-D", "-N", self.host])
        for node in self.nodes[1:]:  # nsenter enters the network namespace only (`ip netns exec` remounts /sys)
            self._spawn(f"slurmd-{node}", ["nsenter", f"--net=/run/netns/{NETNS}", sbin("slurmd"), "-D", "-N", node])
        self._wait("the nodes to be idle", self._idle, 90)
        self.timings["slurmctld+slurmd"] = time.monotonic() - t

    def _idle(self) -> bool:
        states = self.run("sinfo", "-h", "-N", "-o", "%N %T", check=False, timeout=20).stdout.split("\n")
        return {line.split()[0] for line in states if line.strip().endswith("idle")} == set(self.nodes)

    # ------------------------------------------------------------------ queries

    def sacct(self, *fields: str) -> list[dict[str, str]]:
        """Allocations (no steps) of every job the accounting has, as dicts of `fields`."""
        out = self.run("sacct", "-a", "-X", "-n", "-P", "-S", "2000-01-01", "-o", ",".join(fields)).stdout
        return [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line.strip()]


if __name__ == "__main__":
    cluster = LoopbackSlurm()
    with cluster:
        print("up:", cluster.timings, "state in", cluster.root, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
