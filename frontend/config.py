"""The frontend's one typed configuration, built from CLI flags (named as `vllm serve` names them)
and environment variables in one place."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from frontend.classifier import Classifier, read_classifier
from frontend.file_store import default_files_dir
from frontend.generation_defaults import GenerationConfigError, generation_defaults, max_tokens_cap
from frontend.response_store import check_store_url, default_store_url

TOOL_CALL_PARSERS = ("hermes", "llama3_json", "mistral", "pythonic", "qwen3_coder")
REASONING_PARSERS = ("deepseek_r1", "qwen3")
# tritonserver's default --metrics-port.
TRITON_METRICS_PORT = 8002


@dataclass(frozen=True)
class FrontendConfig:
    """Everything the OpenAI frontend needs; nothing else reads flags or the environment."""

    # Hugging Face checkpoint directory: tokenizer and chat template are loaded from it.
    model: Path
    # Model ids clients send and /v1/models lists; the first is the canonical one.
    served_model_names: tuple[str, ...]
    # Triton gRPC endpoint, host:port.
    triton_url: str = "127.0.0.1:8001"
    # Triton's Prometheus endpoint, where the llm model's metrics are read for vLLM's engine metrics on /metrics.
    triton_metrics_url: str = "http://127.0.0.1:8002/metrics"
    # The decoupled engine model every generation (and abort) goes to; see triton_client for why not the
    # ensemble.
    triton_model: str = "llm"
    # HTTP listen address.
    host: str = "127.0.0.1"
    port: int = 9000
    # Context length for validating requests up front; None: the engine's own, asked of Triton
    # (ServingContext.max_model_len).
    max_model_len: int | None = None
    # Accepted bearer tokens; empty means no authentication.
    api_keys: tuple[str, ...] = ()
    # Each API key is its own tenant: its stored responses and prefix-cache blocks are its alone.
    isolate_api_keys: bool = False
    # Browser origins allowed by CORS; empty (the default) sends no CORS headers at all.
    allowed_origins: tuple[str, ...] = ()
    allowed_methods: tuple[str, ...] = ("*",)
    allowed_headers: tuple[str, ...] = ("*",)
    allow_credentials: bool = False
    # Jinja chat template file overriding the tokenizer's own template.
    chat_template: Path | None = None
    # Parse tool calls out of generated text when the request offers tools.
    enable_auto_tool_choice: bool = False
    # Tool-call syntax of the model (one of TOOL_CALL_PARSERS), or None.
    tool_call_parser: str | None = None
    # `<think>` reasoning extraction (one of REASONING_PARSERS), or None.
    reasoning_parser: str | None = None
    # Role of generated chat messages.
    response_role: str = "assistant"
    # Largest accepted request body in bytes (413 above it).
    max_request_body_bytes: int = 16 * 1024 * 1024
    # Seconds to wait for Triton to answer a readiness probe.
    triton_timeout_s: float = 5.0
    # Where the Responses API keeps responses: `sqlite:///PATH` (`sqlite://` is in memory, lost at exit).
    response_store: str = "sqlite://"
    # Where the Files and Batch APIs keep files and batches; None: a temporary directory, removed at exit.
    files_dir: Path | None = None
    # Largest file upload in bytes (POST /v1/files; 413 above it): OpenAI's limit.
    max_upload_bytes: int = 512 * 1024 * 1024
    # Decoupled Triton speech-recognition model behind /v1/audio/*; None serves no audio endpoints (404).
    triton_speech_model: str | None = "whisper"
    # Speech model ids clients send and /v1/models lists ("whisper-1" is what OpenAI code sends).
    speech_model_names: tuple[str, ...] = ("whisper-base", "whisper-1")
    # Sampling defaults for fields a request leaves unset (frontend/generation_defaults.py): SamplingParams
    # name -> value, max_tokens included.
    sampling_defaults: dict[str, Any] = field(default_factory=dict)
    # The most tokens any request may generate, whatever its max_tokens says (vLLM's bound from a generation
    # config directory or --override-generation-config's max_new_tokens); None: only the context bounds them.
    max_tokens_cap: int | None = None
    # The model's classes when --model is a sequence classifier (its config.json says so): it answers
    # /classify, and with one label /score and /rerank as a cross-encoder. None: a generative model.
    classifier: Classifier | None = None

    @property
    def model_name(self) -> str:
        return self.served_model_names[0]


def default_metrics_url(triton_url: str) -> str:
    """Triton's metrics endpoint on the host of its gRPC endpoint `triton_url` (host:port, an IPv6 host in
    brackets), at Triton's default metrics port."""
    host = triton_url.rpartition(":")[0] or triton_url
    return f"http://{host}:{TRITON_METRICS_PORT}/metrics"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m frontend", description="OpenAI-compatible API over Triton"
    )
    parser.add_argument(
        "--model", required=True, help="Hugging Face checkpoint directory (tokenizer, template)"
    )
    parser.add_argument("--served-model-name", nargs="+", default=None, help="model ids clients use")
    parser.add_argument("--triton-url", default=os.environ.get("TRITON_GRPC_URL", "127.0.0.1:8001"))
    parser.add_argument(
        "--triton-metrics-url",
        default=os.environ.get("TRITON_METRICS_URL"),
        help="Triton's metrics endpoint, read for vLLM's engine metrics on /metrics (default: "
        "$TRITON_METRICS_URL, else http://HOST:8002/metrics on the host of --triton-url)",
    )
    parser.add_argument(
        "--triton-model", default="llm", help="decoupled engine model (input_ids in, text_delta out)"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--api-key", nargs="+", default=None, help="accepted bearer tokens (or VLLM_API_KEY)")
    parser.add_argument(
        "--isolate-api-keys",
        action="store_true",
        help="each API key is a tenant: it sees only the responses it stored and shares prefix-cache "
        "entries only with its own requests",
    )
    parser.add_argument(
        "--allowed-origins",
        nargs="+",
        default=[],
        help="CORS: browser origins allowed to call the API ('*' for any); none (default) disables CORS",
    )
    parser.add_argument("--allowed-methods", nargs="+", default=["*"], help="CORS: allowed methods")
    parser.add_argument("--allowed-headers", nargs="+", default=["*"], help="CORS: allowed request headers")
    parser.add_argument("--allow-credentials", action="store_true", help="CORS: allow credentials")
    parser.add_argument("--chat-template", default=None, help="Jinja chat template file")
    parser.add_argument("--enable-auto-tool-choice", action="store_true")
    parser.add_argument("--tool-call-parser", choices=TOOL_CALL_PARSERS, default=None)
    parser.add_argument("--reasoning-parser", choices=REASONING_PARSERS, default=None)
    parser.add_argument("--response-role", default="assistant")
    parser.add_argument("--max-request-body-bytes", type=int, default=16 * 1024 * 1024)
    parser.add_argument(
        "--response-store",
        default=default_store_url(),
        help="Responses API store: sqlite:///PATH (one host), or postgresql://USER:PASSWORD@HOST:PORT/DB shared "
        "by replicas (default: $TRITONLLM_RESPONSE_STORE, else sqlite in the state dir)",
    )
    parser.add_argument(
        "--files-dir",
        default=str(default_files_dir()),
        help="Files and Batch APIs: the directory of uploaded files, batches and their results "
        "(default: $TRITONLLM_FILES_DIR, else files/ in the state dir)",
    )
    parser.add_argument("--max-upload-bytes", type=int, default=512 * 1024 * 1024, help="largest file upload")
    parser.add_argument(
        "--triton-speech-model", default="whisper", help="Triton speech model behind /v1/audio/*"
    )
    parser.add_argument(
        "--speech-model-name",
        nargs="+",
        default=["whisper-base", "whisper-1"],
        help="speech model ids clients use",
    )
    parser.add_argument(
        "--no-speech-model", action="store_true", help="serve no speech model (/v1/audio/* answer 404)"
    )
    parser.add_argument(
        "--generation-config",
        default="auto",
        help="sampling defaults for unset request fields: auto (the model's generation_config.json), vllm "
        "(none), or a directory holding a generation_config.json",
    )
    parser.add_argument(
        "--override-generation-config",
        type=json.loads,
        default={},
        help='JSON object over the generation config, e.g. \'{"temperature": 0.5}\'',
    )
    return parser


def config_from_args(argv: list[str] | None = None) -> FrontendConfig:
    """Parse CLI flags (and `VLLM_API_KEY`, as vLLM reads it) into the config."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.enable_auto_tool_choice and args.tool_call_parser is None:
        parser.error("--enable-auto-tool-choice requires --tool-call-parser")
    model = Path(args.model)
    try:
        check_store_url(args.response_store)
    except ValueError as error:
        parser.error(str(error))
    api_keys = tuple(args.api_key or ([os.environ["VLLM_API_KEY"]] if os.environ.get("VLLM_API_KEY") else []))
    if args.isolate_api_keys and not api_keys:
        parser.error("--isolate-api-keys requires --api-key (or VLLM_API_KEY)")
    if args.allow_credentials and "*" in args.allowed_origins:
        parser.error("--allow-credentials cannot be combined with --allowed-origins '*': name the origins")
    if not isinstance(args.override_generation_config, dict):
        parser.error("--override-generation-config must be a JSON object")
    try:
        sampling_defaults = generation_defaults(model, args.generation_config, args.override_generation_config)
    except GenerationConfigError as error:
        parser.error(str(error))
    return FrontendConfig(
        model=model,
        served_model_names=tuple(args.served_model_name or [str(args.model)]),
        triton_url=args.triton_url,
        triton_metrics_url=args.triton_metrics_url or default_metrics_url(args.triton_url),
        triton_model=args.triton_model,
        host=args.host,
        port=args.port,
        max_model_len=args.max_model_len,
        api_keys=api_keys,
        isolate_api_keys=args.isolate_api_keys,
        allowed_origins=tuple(args.allowed_origins),
        allowed_methods=tuple(args.allowed_methods),
        allowed_headers=tuple(args.allowed_headers),
        allow_credentials=args.allow_credentials,
        chat_template=Path(args.chat_template) if args.chat_template else None,
        enable_auto_tool_choice=args.enable_auto_tool_choice,
        tool_call_parser=args.tool_call_parser,
        reasoning_parser=args.reasoning_parser,
        response_role=args.response_role,
        max_request_body_bytes=args.max_request_body_bytes,
        response_store=args.response_store,
        files_dir=Path(args.files_dir),
        max_upload_bytes=args.max_upload_bytes,
        triton_speech_model=None if args.no_speech_model else args.triton_speech_model,
        speech_model_names=() if args.no_speech_model else tuple(args.speech_model_name),
        sampling_defaults=sampling_defaults,
        max_tokens_cap=max_tokens_cap(args.generation_config, sampling_defaults, args.override_generation_config),
        classifier=read_classifier(model),
    )
