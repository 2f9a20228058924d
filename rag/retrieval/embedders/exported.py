"""sentence-transformers models on ONNX Runtime or OpenVINO (the ``onnx`` / ``openvino`` extras), without optimum.

sentence-transformers' own onnx and openvino backends need optimum, whose releases require transformers < 4.58
(this project pins transformers 5). Here the model's Transformer module is exported once with ``torch.onnx.export``
(the dynamo exporter, eager attention, dynamic batch and sequence axes; the classic exporter if dynamo fails) and
checked against torch before it is kept: a padded batch must give every text the vector it gets alone. The
modules after the Transformer (the model's own Pooling, Dense, Normalize) run as they are, in torch, on the
exported graph's token embeddings, so pooling is always the model's own; a model folder that already ships
``onnx/model.onnx`` (the sentence-transformers layout) is used as it is.

int8: ``onnx-int8`` is ONNX Runtime's dynamic quantisation (weights per output channel; activations quantised per
forward pass, so one text a pass keeps a vector independent of its batch neighbours, as torch's int8 path);
``openvino-int8`` is OpenVINO's weight compression (NNCF, int8 weights per channel, float activations: batches
stay batch-independent). Exports live in a cache folder keyed by the model, the exporter version and the library
versions (one subfolder per backend and quantisation), each written to a temporary folder and renamed into place
under a file lock, so two processes never leave half a file and never export twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from rag.errors import ConfigError
from rag.models import resolve_snapshot
from rag.retrieval.embedders.sentence_transformers import SentenceTransformerEmbeddings

if TYPE_CHECKING:
    import numpy as np
    from sentence_transformers import SentenceTransformer

__all__ = [
    "EXPORTER_VERSION",
    "ExportedEmbeddings",
    "Runtime",
    "default_cache_dir",
    "shipped_onnx",
]

Runtime = Literal["onnx", "openvino"]

EXPORTER_VERSION = "1"
"""Bumped when the export changes (wrapper, opset, checks): older exports are left behind, not reused."""

_EXTRAS = {
    "onnx": "pip install 'chinese-mixtral-rag[onnx]' (onnxruntime, onnx, onnxscript)",
    "openvino": "pip install 'chinese-mixtral-rag[openvino]' (openvino, nncf, onnx, onnxscript)",
}
# The ONNX graph's inputs come from the model's own tokenizer; these are never fed to it.
_NOT_INPUTS = {"modality", "prompt_length"}
# A vector of the exported graph must match torch's this closely (cosine) on the check batch, or it is not kept.
_EXPORT_MIN_COSINE = 0.9999


def default_cache_dir() -> Path:
    """Where exports go when no data folder is given: the user's cache."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "chinese-mixtral-rag" / "embedders"


def shipped_onnx(model: str) -> Path | None:
    """``onnx/model.onnx`` of a model folder that ships one (a local folder or a bundled model), else None;
    never reaches the network."""
    from rag.models import bundled_model_path

    local = Path(model).expanduser()
    folder = local if local.is_dir() else bundled_model_path(model)
    candidate = folder / "onnx" / "model.onnx" if folder is not None else None
    return candidate if candidate is not None and candidate.is_file() else None


def _need(runtime: str, module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ConfigError(
            f"RAG_EMBEDDING_BACKEND={runtime} needs the {module} package, which is not installed: "
            f"{_EXTRAS[runtime]}; or set RAG_EMBEDDING_BACKEND=torch"
        ) from error


class ExportedEmbeddings(SentenceTransformerEmbeddings):
    """A sentence-transformers model whose Transformer runs on ONNX Runtime (``runtime="onnx"``) or OpenVINO.

    Everything but the forward pass is the sentence-transformers model's own (tokenizer, prompts, token limits,
    the modules after the Transformer), so chunking and vectors match the torch backend: cosine 1.0 in float,
    about 0.98 (onnx-int8) and 0.998 (openvino-int8) to torch's on Chinese and English. Recorded as
    ``MODEL#onnx``, ``MODEL#onnx-int8``, ``MODEL#openvino`` or ``MODEL#openvino-int8``. CPU only.
    """

    backend = "sentence-transformers"

    def __init__(
        self,
        model: str,
        *,
        runtime: Runtime,
        quantization: str | None = None,
        batch_size: int = 32,
        cache_dir: Path | None = None,
        setting: str = "RAG_EMBEDDING_MODEL",
    ) -> None:
        if runtime not in _EXTRAS:
            raise ConfigError(f"RAG_EMBEDDING_BACKEND={runtime!r}: use torch, onnx or openvino")
        if quantization not in (None, "int8"):
            raise ConfigError(f"RAG_EMBEDDING_QUANTIZATION={quantization!r}: use int8, or leave it unset")
        super().__init__(model, device="cpu", batch_size=batch_size, setting=setting)
        self.runtime: Runtime = runtime
        self.quantization = quantization
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self._infer: Callable[[dict[str, np.ndarray]], np.ndarray] | None = None
        self._input_names: list[str] = []
        self._load_lock = threading.Lock()  # not the parent's _lock: its token counter calls warm_up inside it
        self._tokenize_lock = threading.Lock()
        self.exports = 0
        """Exports (and quantisations) this instance made; 0 when everything came from the cache."""
        self.model_file: Path | None = None
        """The ONNX (or OpenVINO IR) file that runs."""

    @property
    def name(self) -> str:
        return f"{self.model_name}#{self.runtime}" + ("-int8" if self.quantization else "")

    # -- loading -------------------------------------------------------------------------------------------
    def warm_up(self) -> None:
        if self._infer is not None:
            return
        with self._load_lock:
            if self._infer is not None:
                return
            _need(self.runtime, "onnxruntime" if self.runtime == "onnx" else "openvino")
            path = resolve_snapshot(self.model_name, setting=self._setting)
            from sentence_transformers import SentenceTransformer
            from sentence_transformers.base.modules.transformer import Transformer

            client = self._client or SentenceTransformer(str(path), device="cpu")
            if not isinstance(client[0], Transformer):
                raise ConfigError(
                    f"{self.model_name}: the {self.runtime} backend runs models whose first module is a "
                    f"Transformer (this one starts with {type(client[0]).__name__}); set RAG_EMBEDDING_BACKEND=torch"
                )
            self._adopt_prompts(client)
            self._input_names = _input_names(client)
            onnx_file = shipped_onnx(str(path)) or self._cached("onnx", lambda folder: self._export(client, folder))
            int8 = self.quantization == "int8"
            if self.runtime == "onnx":
                self._infer = self._onnxruntime(onnx_file, quantize=int8)
            else:
                self._infer = self._openvino(onnx_file, quantize=int8)
            self._client = client

    def _cache_root(self) -> Path:
        """The folder of this model's exports: its name, and a digest of what the export depends on."""
        import torch
        import transformers

        path = resolve_snapshot(self.model_name, setting=self._setting)
        weights = sorted(
            (p.name, p.stat().st_size, int(p.stat().st_mtime))
            for p in path.iterdir()
            if p.suffix in {".safetensors", ".bin", ".json", ".onnx"}
        )
        identity = {
            "model": self.model_name,
            "path": str(path.resolve()),
            "files": weights,
            "exporter": EXPORTER_VERSION,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        }
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", self.model_name.strip("/"))[-80:]
        return self.cache_dir / f"{slug}-{digest}"

    def _cached(self, kind: str, make: Callable[[Path], Path]) -> Path:
        """The file ``make(folder)`` writes into a fresh folder, made once per cache: built in a temporary folder
        beside its final place and renamed into place (atomic), under a file lock so two processes do not both
        build it."""
        from filelock import FileLock

        root = self._cache_root()
        final = root / kind
        root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(root / f"{kind}.lock")):
            done = final / "done.json"
            if done.is_file():
                return final / json.loads(done.read_text(encoding="utf-8"))["file"]
            if final.exists():  # a folder without its marker: left by a crash before the rename completed
                shutil.rmtree(final)
            scratch = Path(tempfile.mkdtemp(prefix=f".{kind}-", dir=root))
            try:
                file = make(scratch)
                (scratch / "done.json").write_text(json.dumps({"file": file.name}), encoding="utf-8")
                os.replace(scratch, final)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            self.exports += 1
            return final / file.name

    # -- export --------------------------------------------------------------------------------------------
    def _export(self, client: SentenceTransformer, folder: Path) -> Path:
        """Export ``client``'s Transformer module to ``folder/model.onnx`` and check it against torch."""
        _need(self.runtime, "onnx")
        import torch

        transformer: Any = client[0]
        sample = client.preprocess(_CHECK_TEXTS[:2])  # two lengths: the sample batch is padded
        names = self._input_names
        args = tuple(sample[name] for name in names)
        wrapper = _token_embeddings_module(transformer, names).eval()
        target = folder / "model.onnx"
        model = transformer.auto_model
        previous = getattr(model.config, "_attn_implementation", None)
        errors: list[str] = []
        try:
            if hasattr(model, "set_attn_implementation"):
                # eager attention: an explicit additive mask, the plainest graph for every exporter
                model.set_attn_implementation("eager")
            for dynamo in (True, False):
                try:
                    _torch_export(wrapper, args, names, target, dynamo=dynamo)
                except Exception as error:  # the exporters raise anything; the other one is tried
                    errors.append(f"{'dynamo' if dynamo else 'classic'} exporter: {type(error).__name__}: {error}")
                    continue
                worst = self._check(client, target)
                if worst >= _EXPORT_MIN_COSINE:
                    (folder / "export.json").write_text(
                        json.dumps(
                            {
                                "exporter": "dynamo" if dynamo else "torchscript",
                                "version": EXPORTER_VERSION,
                                "torch": torch.__version__,
                                "min_cosine_vs_torch": worst,
                                "not_used": errors,  # why the dynamo exporter was not, if it was not
                            }
                        ),
                        encoding="utf-8",
                    )
                    return target
                errors.append(f"{'dynamo' if dynamo else 'classic'} exporter: cosine to torch {worst:.4f}")
        finally:
            if previous and hasattr(model, "set_attn_implementation"):
                model.set_attn_implementation(previous)
        raise ConfigError(
            f"{self.model_name} could not be exported to ONNX ({'; '.join(errors)}): set RAG_EMBEDDING_BACKEND=torch"
        )

    def _check(self, client: SentenceTransformer, file: Path) -> float:
        """Lowest cosine between the exported graph's vectors and torch's: each text alone, and all in one padded
        batch (a short text beside a long one, where a wrongly traced attention mask shows)."""
        import numpy as np

        infer = self._onnxruntime(file) if self.runtime == "onnx" else self._openvino(file, quantize=False)
        expected = np.asarray(client.encode(_CHECK_TEXTS, normalize_embeddings=True, convert_to_numpy=True))
        batched = self._pool(client, infer, _CHECK_TEXTS, "")
        alone = np.concatenate([self._pool(client, infer, [text], "") for text in _CHECK_TEXTS])
        return float(min(np.min(np.sum(batched * expected, axis=1)), np.min(np.sum(alone * expected, axis=1))))

    # -- the runtimes ----------------------------------------------------------------------------------------
    def _onnxruntime(self, onnx_file: Path, *, quantize: bool = False) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
        import numpy as np
        import onnxruntime

        file = onnx_file
        if quantize:

            def make_int8(folder: Path) -> Path:
                from onnxruntime.quantization import QuantType, quantize_dynamic

                target = folder / "model.onnx"
                # per output channel: per tensor moves MiniLM's vectors further from float32's
                quantize_dynamic(onnx_file, target, weight_type=QuantType.QInt8, per_channel=True)
                return target

            file = self._cached("onnx-int8", make_int8)
        session = onnxruntime.InferenceSession(str(file), providers=["CPUExecutionProvider"])
        self.model_file = file
        graph_inputs = {i.name for i in session.get_inputs()}  # an exporter may drop an input the graph ignores

        def infer(inputs: dict[str, np.ndarray]) -> np.ndarray:
            return np.asarray(session.run(None, {k: v for k, v in inputs.items() if k in graph_inputs})[0])

        return infer

    def _openvino(self, onnx_file: Path, *, quantize: bool = False) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
        import numpy as np
        import openvino

        core = openvino.Core()
        if quantize:

            def compress(folder: Path) -> Path:
                # NNCF sends usage statistics unless it believes it runs in CI: this product stays offline
                os.environ.setdefault("NNCF_CI", "1")
                nncf = _need("openvino", "nncf")
                nncf.set_log_level(logging.WARNING)  # not its table of bit widths
                target = folder / "model.xml"
                compressed = nncf.compress_weights(core.read_model(str(onnx_file)))  # int8, per channel
                openvino.save_model(compressed, str(target), compress_to_fp16=False)
                return target

            file = self._cached("openvino-int8", compress)
        else:
            file = onnx_file
        self.model_file = file
        # The CPU plugin's default precision: bfloat16 where the CPU has AMX/AVX512-BF16 (cosine 0.9999 to
        # float32, ~1.7x faster here), float32 elsewhere.
        compiled = core.compile_model(core.read_model(str(file)), "CPU")
        graph_inputs = {name for port in compiled.inputs for name in port.get_names()}

        def infer(inputs: dict[str, np.ndarray]) -> np.ndarray:
            request = compiled.create_infer_request()  # one per call: an infer request serves one thread
            fed = {k: v for k, v in inputs.items() if k in graph_inputs}
            return np.asarray(request.infer(fed)[compiled.outputs[0]])

        return infer

    # -- embedding -------------------------------------------------------------------------------------------
    def _pool(
        self,
        client: SentenceTransformer,
        infer: Callable[[dict[str, np.ndarray]], np.ndarray],
        texts: list[str],
        prompt: str,
    ) -> np.ndarray:
        """Normalised vectors of one batch: the graph's token embeddings, then the model's own later modules."""
        import numpy as np
        import torch

        with self._tokenize_lock:  # a fast tokenizer must not serve two threads (a question during an ingest)
            features = client.preprocess(texts, prompt=prompt or None)
        inputs = {name: features[name].numpy() for name in self._input_names}
        features["token_embeddings"] = torch.from_numpy(infer(inputs)).float()
        with torch.inference_mode():
            for module in list(client)[1:]:
                features = module(features)
        vectors = features["sentence_embedding"]
        truncate = getattr(client, "truncate_dim", None)
        if truncate:
            vectors = vectors[:, :truncate]
        array = vectors.numpy().astype(np.float32, copy=False)
        return array / np.maximum(np.linalg.norm(array, axis=1, keepdims=True), 1e-12)

    def embed_array(self, texts: list[str], *, query: bool = False) -> np.ndarray:
        import numpy as np

        self.warm_up()
        client, infer = self.client, self._infer
        assert infer is not None
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        prompt = self._query_prompt if query else self._document_prompt
        # onnx-int8 quantises activations with one scale per forward pass: one text a pass keeps every vector the
        # same wherever it is embedded (and is no slower on 2 cores). Float and weight-only int8 batch freely.
        size = 1 if (self.runtime == "onnx" and self.quantization) else self.batch_size
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # similar lengths together: less padding
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for first in range(0, len(order), size):
            chosen = order[first : first + size]
            out[chosen] = self._pool(client, infer, [texts[i] for i in chosen], prompt)
        return out


# A short and a long text of each language: the check batch pads the short ones.
_CHECK_TEXTS = [
    "长江",
    "Employees may work remotely up to three days per week, with their manager's agreement.",
    "长江全长约6300公里，是中国第一长河，流经青海、西藏、四川、云南、重庆、湖北、湖南、江西、安徽、江苏和上海。",
    "Leave",
]


def _input_names(client: SentenceTransformer) -> list[str]:
    sample = client.preprocess(["a"])
    return [name for name, value in sample.items() if name not in _NOT_INPUTS and hasattr(value, "shape")]


def _token_embeddings_module(transformer: Any, names: list[str]) -> Any:
    import torch

    class TokenEmbeddings(torch.nn.Module):
        """The Transformer module as a function of its input tensors (what an exporter traces)."""

        def __init__(self) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            features: dict[str, Any] = dict(zip(names, tensors, strict=True))
            features["modality"] = "text"
            return self.transformer(features)["token_embeddings"]

    return TokenEmbeddings()


def _torch_export(wrapper: Any, args: tuple[Any, ...], names: list[str], target: Path, *, dynamo: bool) -> None:
    import contextlib
    import io
    import warnings

    import torch

    big = sum(p.numel() * p.element_size() for p in wrapper.parameters()) > 1.8 * 2**30  # protobuf's 2 GiB
    onnx_logger = logging.getLogger("torch.onnx")
    level = onnx_logger.level
    onnx_logger.setLevel(logging.ERROR)  # the dynamo exporter logs every optional op it cannot find (torchvision)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporters warn about every traced branch
        if dynamo:
            batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
            torch.onnx.export(
                wrapper,
                args,
                str(target),
                dynamo=True,
                input_names=names,
                output_names=["token_embeddings"],
                dynamic_shapes=(tuple({0: batch, 1: sequence} for _ in names),),  # forward(*tensors): one argument
                external_data=big,
                optimize=True,
                verbose=False,
            )
        else:
            axes = {name: {0: "batch", 1: "sequence"} for name in names}
            torch.onnx.export(
                wrapper,
                args,
                str(target),
                dynamo=False,
                input_names=names,
                output_names=["token_embeddings"],
                dynamic_axes={**axes, "token_embeddings": {0: "batch", 1: "sequence"}},
                opset_version=17,
            )
    onnx_logger.setLevel(level)
