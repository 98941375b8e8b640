"""The real-PXE lab tier: a network namespace with dnsmasq (DHCP + TFTP) and QEMU VMs under TCG.

Recipe and timings: ../shared/notes/lab.md. Everything lives in a network namespace this module
creates and deletes (bridge ``br0`` 10.77.0.1/24 + fd77::1/64, one tap per VM); nothing touches
the host's network. dnsmasq serves TFTP straight from the directory Cobbler's ``sync`` wrote
(``pxelinux.0``, ``pxelinux.cfg/01-<mac>``, ``images/<distro>/``). Cobbler's ``/cblr/svc`` server
listens on 127.0.0.1 outside the namespace; a forwarder whose listening socket lives inside the
namespace (``setns`` on one thread) exposes it as ``10.77.0.1:<same port>``.

The "installer" is a Debian cloud kernel plus a busybox initramfs (:func:`build_installer`): it
takes DHCP, derives Cobbler's ``nopxe`` URL from the ``inst.ks=`` URL Cobbler put on the kernel
command line (what Cobbler's ``kickstart_done`` snippet does), calls it and powers off.
Needs root (netns, tap, dnsmasq). KVM is not used (guests crash under this host's KVM).
"""

from __future__ import annotations

import ctypes
import gzip
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = REPO_ROOT / "var" / "pxe-cache"
BRIDGE_IP = "10.77.0.1"
_CLONE_NEWNET = 0x40000000
# the cloud kernel's virtio-net stack, in load order (lab.md §4.1); built-in ones are skipped
_MODULES = ("virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci",
            "failover", "net_failover", "virtio_net")  # fmt: skip

_INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in MODULES; do [ -f /lib/modules/$m.ko ] && insmod /lib/modules/$m.ko; done
ip link set eth0 up
udhcpc -i eth0 -s /bin/dhcp.sh -q -f -n -t 20 -T 1 || echo "installer: DHCP failed"
KS=$(tr ' ' '\n' < /proc/cmdline | sed -n 's/^inst\.ks=//p')
NOPXE=$(echo "$KS" | sed 's#/op/autoinstall/#/op/nopxe/#')
echo "installer: calling $NOPXE"
wget -q -O - "$NOPXE" && echo && echo "installer: nopxe done"
poweroff -f
"""

_DHCP_SH = r"""#!/bin/sh
[ "$1" = bound ] || [ "$1" = renew ] || exit 0
ip addr add "$ip/${mask:-24}" dev "$interface"
[ -n "$router" ] && ip route add default via "${router%% *}"
exit 0
"""


class PxeLabError(RuntimeError):
    """The PXE lab could not be built or started (the message names the piece and why)."""


def _run(argv: list[str], what: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if p.returncode != 0:
        raise PxeLabError(f"{what} failed ({' '.join(argv)}): {p.stderr.strip() or p.stdout.strip()}")
    return p


def build_installer(cache: Path = CACHE_DIR) -> tuple[Path, Path]:
    """The installer's kernel and initramfs, built once from Debian packages and cached."""
    kernel, initrd = cache / "vmlinuz", cache / "initrd.gz"
    if kernel.exists() and initrd.exists():
        return kernel, initrd
    cache.mkdir(parents=True, exist_ok=True)
    work = cache / "build"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    deps = _run(["apt-cache", "depends", "linux-image-cloud-amd64"], "looking up the cloud kernel").stdout
    m = re.search(r"Depends: (linux-image-[\w.-]+-cloud-amd64)", deps)
    if not m:
        raise PxeLabError(
            f"no linux-image-*-cloud-amd64 in `apt-cache depends linux-image-cloud-amd64`: {deps}"
        )
    _run(["apt-get", "download", "-q", m.group(1)], f"downloading {m.group(1)}", timeout=600, cwd=work)
    deb = next(work.glob("linux-image-*.deb"))
    _run(["dpkg-deb", "-x", str(deb), str(work / "pkg")], f"unpacking {deb.name}")
    vmlinuz = next((work / "pkg" / "boot").glob("vmlinuz-*"))
    root = work / "initramfs"
    for d in ("bin", "proc", "sys", "dev", "lib/modules"):
        (root / d).mkdir(parents=True, exist_ok=True)
    busybox = Path("/bin/busybox")
    if not busybox.exists():
        raise PxeLabError("/bin/busybox is missing: install busybox-static (deps/apt.txt)")
    shutil.copy2(busybox, root / "bin" / "busybox")
    kos = {p.name.removesuffix(".ko"): p for p in (work / "pkg").rglob("*.ko")}
    for mod in _MODULES:
        if mod in kos:
            shutil.copy2(kos[mod], root / "lib" / "modules" / f"{mod}.ko")
    (root / "init").write_text(_INIT.replace("MODULES", " ".join(_MODULES)))
    (root / "bin" / "dhcp.sh").write_text(_DHCP_SH)
    for f in (root / "init", root / "bin" / "dhcp.sh"):
        f.chmod(0o755)
    files = subprocess.run(["find", ".", "-print0"], cwd=root, capture_output=True, check=True).stdout
    cpio = subprocess.run(["busybox", "cpio", "-o", "-0", "-H", "newc"], cwd=root, input=files,
                          capture_output=True, check=True).stdout  # fmt: skip
    tmp_initrd = cache / "initrd.gz.tmp"
    tmp_initrd.write_bytes(gzip.compress(cpio, 6))
    shutil.copy2(vmlinuz, kernel)
    tmp_initrd.rename(initrd)
    shutil.rmtree(work, ignore_errors=True)
    return kernel, initrd


def _libc():
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.setns.argtypes = (ctypes.c_int, ctypes.c_int)
    return libc


def listen_in_netns(netns: str, address: str, port: int) -> socket.socket:
    """A TCP socket listening on ``address:port`` inside ``netns`` (switches one thread only)."""
    result: dict = {}

    def worker() -> None:
        libc = _libc()
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
        try:
            if libc.setns(target, _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns into netns {netns}")
            try:
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((address, port))
                s.listen(16)
                result["sock"] = s
            finally:
                libc.setns(home, _CLONE_NEWNET)
        except OSError as e:
            result["error"] = e
        finally:
            os.close(home)
            os.close(target)

    t = threading.Thread(target=worker, name=f"setns-{netns}")
    t.start()
    t.join()
    if "error" in result:
        raise PxeLabError(f"cannot listen on {address}:{port} in netns {netns}: {result['error']}")
    return result["sock"]


class Forwarder:
    """Relays TCP connections from a socket in the namespace to 127.0.0.1:port outside it."""

    def __init__(self, listener: socket.socket, target_port: int) -> None:
        self.listener, self.target_port = listener, target_port
        self._thread = threading.Thread(target=self._accept, name="pxe-forwarder", daemon=True)
        self._closed = False

    def start(self) -> Forwarder:
        self._thread.start()
        return self

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
            except OSError:
                conn.close()
                continue
            upstream.settimeout(None)
            threading.Thread(target=self._relay, args=(conn, upstream), daemon=True).start()

    def _relay(self, conn: socket.socket, upstream: socket.socket) -> None:
        back = threading.Thread(target=self._pipe, args=(upstream, conn), daemon=True)
        back.start()
        self._pipe(conn, upstream)
        back.join(30)
        conn.close()
        upstream.close()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> None:
        self._closed = True
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        self._thread.join(timeout=5)


class PxeLab:
    """netns + bridge + dnsmasq serving Cobbler's TFTP tree, the svc forwarder, and QEMU VMs.

    ``stop()`` kills what it started (by PID) and deletes the namespace last; it is safe to
    call after a partial ``start()``.
    """

    def __init__(self, workdir: Path, tftp_root: Path, svc_port: int) -> None:
        self.workdir = Path(workdir).resolve()
        self.tftp_root = Path(tftp_root)
        self.svc_port = svc_port
        self.netns = f"qacloud-pxe-{uuid.uuid4().hex[:8]}"
        self._procs: list[subprocess.Popen] = []
        self._forwarder: Forwarder | None = None
        self._netns_created = False
        self._taps = 0

    def _ns(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv]

    def start(self) -> PxeLab:
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            _run(["ip", "netns", "add", self.netns], "creating the network namespace")
            self._netns_created = True
            ip = ["ip", "-n", self.netns]
            _run([*ip, "link", "set", "lo", "up"], "netns lo")
            _run([*ip, "link", "add", "br0", "type", "bridge"], "bridge br0")
            _run([*ip, "addr", "add", f"{BRIDGE_IP}/24", "dev", "br0"], "br0 IPv4")
            # iPXE waits ~13 s for an IPv6 router advertisement unless it gets one (lab.md §3)
            _run([*ip, "addr", "add", "fd77::1/64", "dev", "br0", "nodad"], "br0 IPv6")
            _run([*ip, "link", "set", "br0", "up"], "br0 up")
            log = open(self.workdir / "dnsmasq.out", "ab")
            self._procs.append(
                subprocess.Popen(
                    self._ns(
                        "dnsmasq",
                        "--conf-file=/dev/null",
                        "--keep-in-foreground",
                        "--port=0",
                        "--user=root",
                        "--interface=br0",
                        "--bind-interfaces",
                        "--except-interface=lo",
                        "--dhcp-range=10.77.0.100,10.77.0.199,255.255.255.0,1h",
                        f"--dhcp-leasefile={self.workdir / 'leases'}",
                        "--dhcp-boot=pxelinux.0",
                        "--enable-tftp",
                        f"--tftp-root={self.tftp_root}",
                        "--enable-ra",
                        "--dhcp-range=fd77::,ra-only,64",
                        "--log-dhcp",
                        f"--log-facility={self.workdir / 'dnsmasq.log'}",
                    ),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            )
            log.close()
            sock = listen_in_netns(self.netns, BRIDGE_IP, self.svc_port)
            self._forwarder = Forwarder(sock, self.svc_port).start()
        except BaseException:
            self.stop()
            raise
        return self

    def add_vm(self, name: str, mac: str, memory_mb: int = 256) -> Path:
        """Start a paused QEMU VM (TCG) on a new tap; return its QMP socket (power it via a BMC)."""
        tap = f"tap{self._taps}"
        self._taps += 1
        ip = ["ip", "-n", self.netns]
        _run([*ip, "tuntap", "add", "dev", tap, "mode", "tap"], f"tap {tap}")
        _run([*ip, "link", "set", tap, "master", "br0"], f"tap {tap} on br0")
        _run([*ip, "link", "set", tap, "up"], f"tap {tap} up")
        qmp = self.workdir / f"{name}.qmp"
        argv = self._ns(
            "qemu-system-x86_64", "-accel", "tcg", "-m", str(memory_mb), "-smp", "1",
            "-nographic", "-serial", f"file:{self.workdir / f'{name}-console.log'}", "-monitor", "none",
            "-boot", "n", "-S", "-no-shutdown",
            "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
            "-device", f"virtio-net-pci,netdev=n0,mac={mac},id=nic0",
            "-qmp", f"unix:{qmp},server=on,wait=off",
        )  # fmt: skip
        log = open(self.workdir / f"{name}-qemu.out", "ab")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        self._procs.append(proc)
        return qmp

    def console(self, name: str) -> str:
        f = self.workdir / f"{name}-console.log"
        return f.read_text(errors="replace") if f.exists() else ""

    def diagnostics(self) -> str:
        parts = []
        for f in sorted(self.workdir.glob("*.log")) + sorted(self.workdir.glob("*.out")):
            parts.append(f"--- {f.name} ---\n" + "\n".join(f.read_text(errors="replace").splitlines()[-30:]))
        return "\n".join(parts)

    def stop(self) -> None:
        if self._forwarder is not None:
            self._forwarder.stop()
            self._forwarder = None
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        self._procs.clear()
        if self._netns_created:  # last: a namespace lives while processes run in it
            subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)
            self._netns_created = False

    def __enter__(self) -> PxeLab:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
