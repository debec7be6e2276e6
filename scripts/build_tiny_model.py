"""Build the tiny random Qwen3 + local BPE tokenizer used by tests and the tiny recipes (no download).

    python scripts/build_tiny_model.py --output_dir outputs/tiny-model
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from synthetic.tiny_model import save_tiny_model  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/tiny-model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hidden_size", type=int, default=128)
    parser.add_argument("--num_layers", type=int, default=2)
    parser.add_argument("--num_heads", type=int, default=2)
    args = parser.parse_args()
    path = save_tiny_model(args.output_dir, seed=args.seed, hidden_size=args.hidden_size,
                           num_layers=args.num_layers, num_heads=args.num_heads)
    print(f"tiny model written to {path}")


if __name__ == "__main__":
    main()
