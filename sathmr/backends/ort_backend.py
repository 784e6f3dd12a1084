"""ONNX Runtime backend: runs a model written by `sathmr export --format onnx`.

A two-stage export (a folder) runs as two sessions with the shared token selection between them
(``TwoStage``); a static export (one file) as one session. Everything the graphs need comes from their
metadata, so the only user inputs are the path and the device. On CUDA the images and the stage-A
tensors stay on the GPU between the two graphs (I/O binding); only the small scale map comes to the
host for the selection. A requested execution provider that ONNX Runtime cannot offer is an error,
never a silent fall-back to CPU: a "CUDA" benchmark that quietly ran on the CPU is worse than no number.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sathmr.backends.base import fixed_batches
from sathmr.backends.exported import ExportedBackend
from sathmr.backends.meta import GRAPHS, QUERY_OUTPUTS, Artifact
from sathmr.backends.two_stage import selection_feeds
from sathmr.common.errors import SathmrError
from sathmr.common.optional import require
from sathmr.model.sathmr import NET_OUTPUTS
from sathmr.model.tokens import Selection

#: CUDA provider options (names checked against ONNX Runtime's, tests/test_gpu_api.py): TF32 off, because fp32
#: means fp32 — the token selection thresholds stage A's output (TF32 moved sat_644's token set); a heuristic
#: cuDNN algorithm choice, because EXHAUSTIVE (the default) searches again for every new input shape, and the
#: level-0 patch convolution's batch (the SAT cells) changes with nearly every image
CUDA_OPTIONS = {"use_tf32": "0", "cudnn_conv_algo_search": "HEURISTIC"}
#: run options of CPU sessions: the arena's unused regions go back to the system when a run ends
CPU_RUN_CONFIG = {"memory.enable_memory_arena_shrinkage": "cpu:0"}


def providers_for(device: str, available: list[str]) -> list:
    """The ORT provider list for ``device`` ('cpu', 'cuda', 'cuda:1'); refuses what is not installed."""
    dev = device.lower()
    if dev == "cpu":
        return ["CPUExecutionProvider"]
    if dev == "cuda" or dev.startswith("cuda:"):
        if "CUDAExecutionProvider" not in available:
            raise SathmrError(f"--device {device}: ONNX Runtime has no CUDAExecutionProvider here (available: "
                              f"{', '.join(available)}); install onnxruntime-gpu (pip install 'sathmr[gpu]') "
                              "or use --device cpu")
        index = int(dev.split(":", 1)[1]) if ":" in dev else 0
        # CPU stays in the list only for the few ops CUDA lacks (shape bookkeeping), as ORT intends
        return [("CUDAExecutionProvider", {"device_id": str(index), **CUDA_OPTIONS}), "CPUExecutionProvider"]
    raise SathmrError(f"--device {device!r}: the ort backend supports cpu, cuda, cuda:N")


def session_options(ort, threads: int | None, cpu: bool = True):
    """Intra-op threads as asked (default: ORT's, one per core), one inter-op thread (the graphs are a
    chain of large ops: parallel branches buy nothing), every graph optimisation ORT has.

    The memory arena stays on: without it every intermediate of a run is a fresh ``malloc``, and the
    large ones (a stage-C MLP activation is 1986 x 3072 floats) come from the kernel page by page on
    every run — measured on sat_644, 2 cores: the ORT MLP of one stage-C block 111 → 92 ms; the two-stage
    run 0.80x → 0.88–0.99x PyTorch's (one interleaved run, both photos). What an arena costs with token axes that change from image to image (it
    would keep the largest image's buffers for good) is taken back after every run instead
    (:data:`CPU_RUN_CONFIG`, arena shrinkage), so the peak stays one image's.

    Spinning only while a graph runs: by default ORT's intra-op threads also busy-wait for more work
    after every run, and on the CPU they then compete with the PyTorch threads that decode the outputs
    (SMPL, projection) next: post-processing of the very same outputs took 2.9x as long after an ORT run
    as after a torch one (1.7 → 4.9 ms per image on the embedded model, 2 cores). Turning spinning off
    altogether cured that but cost ~4 % of the full-size tokens graph; ``session.force_spinning_stop``
    keeps the spinning inside a run (between its ops) and puts the threads to sleep when it returns."""
    opts = ort.SessionOptions()
    if cpu:
        opts.add_session_config_entry("session.force_spinning_stop", "1")
    if threads:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return opts


def open_session(ort, path: Path, opts, providers: list, device: str):
    errors = ort.capi.onnxruntime_pybind11_state
    try:
        session = ort.InferenceSession(str(path), opts, providers=providers)
    except (errors.InvalidProtobuf, errors.InvalidGraph, errors.NoSuchFile) as exc:   # a bad file: the user's
        raise SathmrError(f"ONNX Runtime cannot load {path}: {str(exc).splitlines()[0]}") from None
    used = session.get_providers()
    if providers[0] != "CPUExecutionProvider" and "CUDAExecutionProvider" not in used:
        raise SathmrError(f"--device {device}: ONNX Runtime could not start CUDA for {path} (providers: {used})")
    return session


class OrtBackend(ExportedBackend):
    """ONNX Runtime on an ONNX export: CPU sessions exchange numpy arrays; on CUDA the images and stage-A
    tensors stay on the device between the graphs (IO binding)."""
    name = "ort"
    suffix = ".onnx"

    def __init__(self, sessions: dict, artifact: Artifact, device: str, info: dict):
        self.ort = require("onnxruntime")
        self.sessions = sessions
        self.cuda = device.startswith("cuda")
        self.device_id = int(device.split(":", 1)[1]) if ":" in device else 0
        self.run_options = self.ort.RunOptions()
        for k, v in ({} if self.cuda else CPU_RUN_CONFIG).items():
            self.run_options.add_run_config_entry(k, v)
        super().__init__(artifact, device, info)

    @classmethod
    def from_file(cls, path: str | Path, device: str = "cpu", threads: int | None = None,
                  config: str | None = None, checkpoint: str | Path | None = None,
                  precision: str | None = None) -> OrtBackend:
        """Open ``path``; ``config``/``checkpoint``/``precision``, when given, must be the ones it was exported with."""
        ort = require("onnxruntime")
        art = cls.read_checked(path, config, checkpoint, precision)
        providers = providers_for(device, ort.get_available_providers())
        opts = session_options(ort, threads, cpu=not device.startswith("cuda"))
        sessions = {g: open_session(ort, f, opts, providers, device) for g, f in art.files.items()}
        for g, s in sessions.items():
            names = tuple(i.name for i in s.get_inputs())
            if names != GRAPHS[g][0]:
                raise SathmrError(f"{art.files[g]}: graph inputs {list(names)} are not {list(GRAPHS[g][0])}; re-export it")
        used = next(iter(sessions.values())).get_providers()
        meta = art.meta
        info = cls.describe(path, device, f"ONNX Runtime, {used[0]}", art, providers=",".join(used),
                            batch=meta.batch or "dynamic")
        if meta.layout == "static":
            info.update(budget_sat=meta.budget.sat_cells, budget_context=meta.budget.context,
                        canvas=f"{meta.canvas_hw[0]}x{meta.canvas_hw[1]}")
        return cls(sessions, art, device, info)

    # ----------------------------------------------------------------------------------------------
    def run(self, images: torch.Tensor, img_hw: torch.Tensor) -> dict[str, torch.Tensor]:
        images, img_hw = images.detach().cpu().float().contiguous(), img_hw.detach().cpu().to(torch.int64)
        return self.run_layout(images, img_hw)

    def _static(self, images: torch.Tensor, img_hw: torch.Tensor) -> dict[str, torch.Tensor]:
        self.check_canvas(images)
        parts = []
        for xb, hb, m in fixed_batches(images, img_hw, self.fixed_batch):
            outs = self.sessions["static"].run(list(NET_OUTPUTS), {"images": xb.numpy(), "img_hw": hb.numpy()},
                                                  self.run_options)
            parts.append([torch.from_numpy(o[:m]) for o in outs])
        return {k: torch.cat([p[i] for p in parts]) for i, k in enumerate(NET_OUTPUTS)}

    def _scale_map(self, images: torch.Tensor, img_hw: torch.Tensor):
        return (self._scale_map_cuda if self.cuda else self._scale_map_cpu)(images, img_hw)

    def _tokens(self, images: torch.Tensor, stage_a, sel: Selection) -> dict[str, torch.Tensor]:
        return (self._tokens_cuda if self.cuda else self._tokens_cpu)(images, stage_a, sel)

    # two-stage on the CPU: numpy arrays between the graphs
    def _scale_map_cpu(self, images: torch.Tensor, img_hw: torch.Tensor):
        scale_map, t1, cls = self.sessions["scale_map"].run(None, {"images": images.numpy(), "img_hw": img_hw.numpy()},
                                                            self.run_options)
        return torch.from_numpy(scale_map), (t1, cls)

    def _tokens_cpu(self, images: torch.Tensor, stage_a, sel: Selection) -> dict[str, torch.Tensor]:
        t1, cls = stage_a
        feeds = {"images": images.numpy(), "t1": t1, "cls": cls, **{k: v.numpy() for k, v in selection_feeds(sel).items()}}
        outs = self.sessions["tokens"].run(list(QUERY_OUTPUTS), feeds, self.run_options)
        return dict(zip(QUERY_OUTPUTS, map(torch.from_numpy, outs)))

    # two-stage on CUDA: images uploaded once, stage-A tensors bound on the device between the graphs
    def _scale_map_cuda(self, images: torch.Tensor, img_hw: torch.Tensor):
        ort, dev = self.ort, self.device_id
        x = ort.OrtValue.ortvalue_from_numpy(images.numpy(), "cuda", dev)
        b = self.sessions["scale_map"].io_binding()
        b.bind_ortvalue_input("images", x)
        b.bind_cpu_input("img_hw", img_hw.numpy())
        b.bind_output("scale_map", "cpu")
        b.bind_output("t1", "cuda", dev)
        b.bind_output("cls", "cuda", dev)
        self.sessions["scale_map"].run_with_iobinding(b)
        scale_map, t1, cls = b.get_outputs()
        return torch.from_numpy(np.array(scale_map.numpy())), (x, t1, cls)

    def _tokens_cuda(self, images: torch.Tensor, stage_a, sel: Selection) -> dict[str, torch.Tensor]:
        x, t1, cls = stage_a
        b = self.sessions["tokens"].io_binding()
        b.bind_ortvalue_input("images", x)
        b.bind_ortvalue_input("t1", t1)
        b.bind_ortvalue_input("cls", cls)
        for k, v in selection_feeds(sel).items():
            b.bind_cpu_input(k, np.ascontiguousarray(v.numpy()))
        for k in QUERY_OUTPUTS:
            b.bind_output(k, "cpu")
        self.sessions["tokens"].run_with_iobinding(b)
        return dict(zip(QUERY_OUTPUTS, (torch.from_numpy(o) for o in b.copy_outputs_to_cpu())))
