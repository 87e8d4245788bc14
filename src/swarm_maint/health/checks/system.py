"""System checks: a pending reboot after updates, and swap on a GPU/Kubernetes node."""

from __future__ import annotations

from pathlib import Path

from ..check import CheckResult, HealthCheck, HealthContext
from .disk import format_bytes

__all__ = ["RebootRequiredCheck", "SwapPolicyCheck", "create"]


class RebootRequiredCheck:
    """Debian/Ubuntu's update-notifier flag file, /var/run/reboot-required, with the
    packages that asked for it in reboot-required.pkgs."""

    name = "reboot_required"
    level = 1

    def __init__(self, ctx: HealthContext, root: Path = Path("/")) -> None:
        self._root = root
        self.interval = ctx.config.interval
        self.timeout = ctx.config.timeout

    def run(self) -> CheckResult:
        flag: Path | None = None
        for rel in ("var/run/reboot-required", "run/reboot-required"):
            if (self._root / rel).exists():
                flag = self._root / rel
                break
        if flag is None:
            return CheckResult(self.name, "OK", "no reboot required", None,
                               {"reboot_required": False})
        packages: list[str] = []
        try:
            text = flag.with_name("reboot-required.pkgs").read_text(errors="replace")
            for line in text.splitlines():
                if line.strip() and line.strip() not in packages:
                    packages.append(line.strip())
        except OSError:
            pass
        what = f" by {', '.join(packages)}" if packages else ""
        return CheckResult(
            self.name, "WARNING",
            f"a reboot is required to finish updates{what}: drain the node and reboot it "
            "in a maintenance window", "reboot",
            {"reboot_required": True, "packages": packages, "flag": str(flag)})


class SwapPolicyCheck:
    """Swap makes GPU jobs' host memory slow in unpredictable ways and kubelet refuses to
    start with it by default; ``ctx.extras['swap_allowed'] = True`` accepts it."""

    name = "swap_policy"
    level = 1

    def __init__(self, ctx: HealthContext) -> None:
        self._ctx = ctx
        self.interval = ctx.config.interval
        self.timeout = ctx.config.timeout

    def run(self) -> CheckResult:
        total = self._ctx.frame().one("swarm_swap_total_bytes")
        if total is None:
            return CheckResult(self.name, "UNKNOWN",
                               "no swap metrics in the latest collection "
                               "(is the memory collector enabled?)")
        allowed = self._ctx.extras.get("swap_allowed") is True
        details = {"swap_total_bytes": total, "swap_allowed": allowed}
        if total > 0 and not allowed:
            return CheckResult(
                self.name, "WARNING",
                f"swap is on ({format_bytes(total)}): GPU workloads and kubelet expect it "
                "off; run `swapoff -a` and remove swap from /etc/fstab", "investigate",
                details)
        if total > 0:
            return CheckResult(self.name, "OK", f"swap is on ({format_bytes(total)}), "
                               "which this node allows", None, details)
        return CheckResult(self.name, "OK", "swap is off", None, details)


def create(ctx: HealthContext) -> list[HealthCheck]:
    return [RebootRequiredCheck(ctx), SwapPolicyCheck(ctx)]
