"""How many explorer kernels ``serve`` keeps alive: each page of the app is a kernel of 1-1.4 GB
that sweeps in threads, so their number is bounded (Voila has no such limit of its own).

A new page at the limit first shuts down the least recently active kernel whose page was closed
or reloaded (it had a connection and has none now: the culler would shut it down soon anyway);
when every kernel at the limit still has its page open, the new page is refused with HTTP 503
and a message saying so, instead of starting one more kernel.
"""
from __future__ import annotations

from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager
from tornado import web
from traitlets import Integer

MAX_KERNELS = 4  # pages served at once by default: about 4-6 GB of kernels on the embedded model


class BoundedKernelManager(AsyncMappingKernelManager):
    """A kernel manager that never runs more than ``max_kernels`` kernels (Voila's
    ``VoilaConfiguration.multi_kernel_manager_class``)."""

    max_kernels = Integer(MAX_KERNELS, min=1, config=True,
                          help="the most kernels (open explorer pages) alive at once")

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.connected_once: set[str] = set()  # kernels whose page connected at least once

    def notify_connect(self, kernel_id: str) -> None:
        super().notify_connect(kernel_id)
        self.connected_once.add(kernel_id)

    def closed_pages(self) -> list[str]:
        """Kernels whose page connected and went away, least recently active first."""
        models = [self.kernel_model(k) for k in self.list_kernel_ids() if k in self.connected_once]
        return [m["id"] for m in sorted(models, key=lambda m: m["last_activity"]) if m["connections"] == 0]

    async def start_kernel(self, *args, **kwargs) -> str:
        """Start a kernel for a new page, making room first (see the module's docstring).

        Raises:
            tornado.web.HTTPError: 503, every one of ``max_kernels`` kernels has its page open.
        """
        if kwargs.get("kernel_id") not in self:  # an existing kernel is returned as it is
            for victim in self.closed_pages()[:max(0, len(self.list_kernel_ids()) - self.max_kernels + 1)]:
                self.log.info("polycam-explorer: shutting down kernel %s (its page was closed) "
                              "to stay within %d kernels", victim, self.max_kernels)
                await self.shutdown_kernel(victim, now=True)
            if len(self.list_kernel_ids()) >= self.max_kernels:
                raise web.HTTPError(503, reason=(
                    f"{self.max_kernels} explorer pages are open, the limit of this server: close one "
                    "(its kernel is freed at once when a new page needs it), or restart serve with a "
                    "higher --max-kernels"))
        return await super().start_kernel(*args, **kwargs)

    async def shutdown_kernel(self, kernel_id: str, *args, **kwargs) -> None:
        self.connected_once.discard(kernel_id)
        await super().shutdown_kernel(kernel_id, *args, **kwargs)


def voila_arguments(max_kernels: int, idle_kernel_timeout: int) -> list[str]:
    """Voila's options for the explorer's kernels: at most ``max_kernels`` alive, and the kernel
    of a closed or reloaded page shut down ``idle_kernel_timeout`` seconds after its page went
    (with its sweeps: they run in threads, so the kernel itself looks idle)."""
    return [f"--VoilaConfiguration.multi_kernel_manager_class={__name__}.BoundedKernelManager",
            f"--BoundedKernelManager.max_kernels={max_kernels}",
            f"--MappingKernelManager.cull_idle_timeout={idle_kernel_timeout}",
            f"--MappingKernelManager.cull_interval={max(1, min(30, idle_kernel_timeout // 2))}",
            "--MappingKernelManager.cull_connected=False"]
