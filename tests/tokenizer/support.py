"""Tokenizer test support: Chinese word-based text (a BPE trained on it learns multi-character words) and
in-process access to the utils/ scripts."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def load_script(name: str) -> ModuleType:
    """utils/<name>.py as a module, to call its main(argv) without a new interpreter."""
    spec = importlib.util.spec_from_file_location(f"script_{name}", ROOT / "utils" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

ZH_WORDS = ("长江 黄河 中国 城市 学习 语言 模型 数据 训练 预测 优化 更新 权重 机器 我们 他们 今天 明天 天气 "
            "下雨 晴朗 山脉 河流 湖泊 森林 动物 植物 科学 技术 研究 发展 经济 社会 文化 历史 教育 学生 老师 "
            "问题 答案 方法 结果 重要 简单 复杂 快速 慢慢 因为 所以 但是 如果 可以 需要 知道 认为 发现 开始 "
            "结束 世界 人们 时间 地方 东西 朋友 家庭 工作 生活 音乐 电影 书籍 图片 声音 颜色 红色 蓝色").split()
PUNCTUATION = "，。？！"


def zh_sentence(rng: random.Random) -> str:
    words = [rng.choice(ZH_WORDS) for _ in range(rng.randint(4, 14))]
    return "".join(words) + rng.choice(PUNCTUATION) + str(rng.randint(0, 2030))


def zh_texts(n: int, seed: int = 0) -> list[str]:
    """`n` Chinese lines (words, punctuation and a number)."""
    rng = random.Random(seed)
    return [zh_sentence(rng) for _ in range(n)]


MIXED_TEXTS = (
    "模型在小机器上训练 the model reads data 2024年3月15日 😀👍 emoji!",
    "Hello 世界, 123456 tokens/秒; 中文English混合 — done.",
    "长江全长约6300千米，是中国第一长河。The Yangtze is 6,300 km long.",
    "code: def f(x):\n    return x * 2  # 注释",
)
