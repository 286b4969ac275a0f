#!/usr/bin/env python3
"""Tiny tokenizers for the bundled pipelines, and reference token ids for the Rust tokenizer tests.

Writes
  models/fixtures/pipeline/tokenizer_clip/   vocab.json, merges.txt, tokenizer_config.json,
                                             special_tokens_map.json: a CLIP BPE tokenizer with 1000
                                             tokens (the tiny CLIP text encoder's vocab size), in the
                                             files a slow CLIPTokenizer saves (no tokenizer.json)
  models/fixtures/pipeline/tokenizer_xlmr/   tokenizer.json, tokenizer_config.json: an XLM-R
                                             (sentencepiece unigram) tokenizer with 1000 pieces, saved
                                             by transformers' XLMRobertaTokenizer
  models/tests/data/tokenizer_refs.json      prompts and the ids (and XLM-R attention masks) that
                                             transformers gives them, padded/truncated to 77

The CLIP merges are learned here with CLIP's own algorithm (byte-level symbols, `</w>` ending each
word, most frequent pair merged first) on the prompts below. The CLIP reference ids come from
transformers' CLIPTokenizer and are cross-checked against an independent pure-Python port of OpenAI's
CLIP BPE (`clip_bpe_reference`), so the Rust side is checked against two implementations.

Run with transformers 5.x:  python models/scripts/make_tokenizer_fixtures.py
"""
import json
from collections import Counter
from pathlib import Path

import regex
import transformers
import tokenizers
from transformers import CLIPTokenizer, XLMRobertaTokenizer

ROOT = Path(__file__).resolve().parents[1]
CLIP_DIR = ROOT / "fixtures" / "pipeline" / "tokenizer_clip"
XLMR_DIR = ROOT / "fixtures" / "pipeline" / "tokenizer_xlmr"
REFS = ROOT / "tests" / "data" / "tokenizer_refs.json"
VOCAB_SIZE = 1000
MAX_LENGTH = 77

CORPUS = """
a photograph of an astronaut riding a horse on the moon, highly detailed, 8k
a painting of a fox sitting in a field at sunrise in the style of claude monet
an oil painting of a cat wearing a crown, portrait, dramatic lighting, trending on artstation
a cozy cabin in the snowy mountains at night, warm light in the windows, digital art
a cyberpunk city street in the rain with neon signs, cinematic, wide angle lens
a bowl of fruit on a wooden table, still life, soft shadows, studio photography
a dragon flying over a medieval castle, fantasy illustration, epic composition
a watercolor of a lighthouse by the sea during a storm, waves crashing on the rocks
portrait of an old man with a beard, black and white photo, sharp focus, film grain
a robot reading a book in a library, concept art, volumetric light, unreal engine
the city skyline at sunset, reflections in the river, long exposure photograph
a small red boat on a calm lake surrounded by pine trees, morning fog
a close up of a flower with dew drops, macro photography, bokeh background
an ancient temple in the jungle covered with vines, matte painting, highly detailed
a futuristic car driving through the desert, dust, golden hour, photorealistic
a beautiful landscape with rolling green hills and a blue sky with white clouds
blurry, low quality, bad anatomy, extra fingers, deformed, ugly, watermark, text
a steampunk airship above victorian london, brass gears, intricate mechanical details
underwater coral reef with colorful tropical fish and sea turtles, national geographic
a minimalist poster of a mountain range, flat design, pastel colors, vector graphic
a knight in shining armor standing in a burning village, dark fantasy, grim atmosphere
a bustling japanese market street with lanterns, anime style, studio ghibli
a portrait of a young woman with freckles and curly hair, natural light, 85mm
an abandoned factory overgrown with plants, post apocalyptic, moody overcast sky
a glass of whiskey on a bar counter, smoky background, commercial product shot
a giant tortoise carrying a village on its back, surreal, whimsical children's book
a spaceship interior with holographic displays, sci fi, symmetrical, clean render
""".strip().split("\n")

# What the tests tokenize: ordinary prompts, case, spacing, punctuation, digits, contractions,
# unicode, words the tiny vocab has never seen, the empty prompt, and one longer than 77 tokens.
PROMPTS = [
    "a photograph of an astronaut riding a horse",
    "A Photograph   of an ASTRONAUT\triding\na horse!!",
    "it's a cat's toy, isn't it? they'll see; we'd go.",
    "8k uhd, 1024x768, f/1.8, 35mm, 2.5 stars",
    "café crème brûlée, naïve façade",
    "東京の夜景, neon lights",
    "zyxwvut qqq xylophone-quizzical",
    "",
    "blurry, low quality",
    " ".join(CORPUS[:4]),
    "emoji 🎨🖌️ and symbols © ™ → ∞",
]


# ---- CLIP BPE (OpenAI's algorithm) -------------------------------------------------------------

def bytes_to_unicode() -> dict:
    """GPT-2/CLIP's reversible byte → printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


BYTE_ENCODER = bytes_to_unicode()
CLIP_PAT = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)


def clip_clean(text: str) -> str:
    return regex.sub(r"\s+", " ", text).strip().lower()


def clip_words(text: str):
    for token in regex.findall(CLIP_PAT, clip_clean(text)):
        yield "".join(BYTE_ENCODER[b] for b in token.encode("utf-8"))


def learn_merges(texts, count: int):
    """Classic BPE training: words as symbol sequences (last symbol carries `</w>`), repeatedly merge
    the most frequent adjacent pair (ties: the pair seen first in sorted order), until `count`
    distinct merged tokens exist (two merges may spell the same token: ("a", "bc") and ("ab", "c"))."""
    words = Counter()
    for text in texts:
        for w in clip_words(text):
            words[tuple(w[:-1]) + (w[-1] + "</w>",)] += 1
    merges, made = [], set()
    while len(made) < count:
        pairs = Counter()
        for word, freq in words.items():
            for a, b in zip(word, word[1:]):
                pairs[(a, b)] += freq
        if not pairs:
            break
        best = max(sorted(pairs), key=lambda p: pairs[p])
        merges.append(best)
        made.add(best[0] + best[1])
        merged = Counter()
        for word, freq in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += freq
        words = merged
    return merges


def clip_bpe_reference(text: str, encoder: dict, ranks: dict):
    """OpenAI CLIP's SimpleTokenizer.encode, ported: ids without BOS/EOS."""
    ids = []
    for w in clip_words(text):
        word = tuple(w[:-1]) + (w[-1] + "</w>",)
        while len(word) > 1:
            pairs = set(zip(word, word[1:]))
            best = min(pairs, key=lambda p: ranks.get(p, float("inf")))
            if best not in ranks:
                break
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            word = tuple(out)
        ids.extend(encoder[s] for s in word)
    return ids


def make_clip():
    base = list(BYTE_ENCODER.values())
    specials = ["<|startoftext|>", "<|endoftext|>"]
    merges = learn_merges(CORPUS, VOCAB_SIZE - 2 * len(base) - len(specials))
    merged_tokens = list(dict.fromkeys("".join(m) for m in merges))
    vocab = base + [c + "</w>" for c in base] + merged_tokens + specials
    assert len(vocab) == VOCAB_SIZE and len(set(vocab)) == VOCAB_SIZE, "duplicate tokens"
    encoder = {tok: i for i, tok in enumerate(vocab)}
    CLIP_DIR.mkdir(parents=True, exist_ok=True)
    (CLIP_DIR / "vocab.json").write_text(json.dumps(encoder, ensure_ascii=False) + "\n", encoding="utf-8")
    (CLIP_DIR / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    # SD 1.x's tokenizer files say this (pad is the end-of-text token; SD 2.x pads with "!").
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
               "pad_token": "<|endoftext|>"}
    (CLIP_DIR / "special_tokens_map.json").write_text(json.dumps(special, indent=1) + "\n")
    (CLIP_DIR / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "CLIPTokenizer", "model_max_length": MAX_LENGTH, "do_lower_case": True, **special}, indent=1) + "\n")

    tok = CLIPTokenizer(vocab=str(CLIP_DIR / "vocab.json"), merges=str(CLIP_DIR / "merges.txt"))
    ranks = {m: i for i, m in enumerate(merges)}
    refs = []
    for p in PROMPTS:
        ids = tok(p, padding="max_length", max_length=MAX_LENGTH, truncation=True)["input_ids"]
        plain = clip_bpe_reference(p, encoder, ranks)[: MAX_LENGTH - 2]
        expect = [encoder["<|startoftext|>"]] + plain + [encoder["<|endoftext|>"]]
        expect += [encoder[special["pad_token"]]] * (MAX_LENGTH - len(expect))
        assert ids == expect, f"transformers and the OpenAI port disagree on {p!r}:\n{ids}\n{expect}"
        refs.append({"prompt": p, "input_ids": ids})
    return refs


# ---- XLM-R (sentencepiece unigram) -------------------------------------------------------------

def make_xlmr():
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    trainer_tok = tokenizers.SentencePieceUnigramTokenizer()
    trainer_tok.train_from_iterator(CORPUS, vocab_size=VOCAB_SIZE - len(specials) - 1, special_tokens=[], unk_token=None,
                                    show_progress=False)
    pieces = json.loads(trainer_tok.to_str())["model"]["vocab"]
    pieces = [(p, s) for p, s in pieces if p not in specials and p != "<mask>"]
    # The trainer stops below the requested size when the corpus runs out of pieces; pad with
    # single characters (low score) so the vocab is exactly 1000 like the text encoder's embedding.
    have = {p for p, _ in pieces}
    extra = [c for c in "abcdefghijklmnopqrstuvwxyz0123456789.,!?'-()" + "éèêüöäßçñ東京の夜景" if c not in have]
    while len(pieces) < VOCAB_SIZE - len(specials) - 1 and extra:
        pieces.append((extra.pop(0), -20.0))
    i = 0
    while len(pieces) < VOCAB_SIZE - len(specials) - 1:
        pieces.append((f"▁filler{i}", -30.0))
        i += 1
    vocab = [(s, 0.0) for s in specials] + pieces[: VOCAB_SIZE - len(specials) - 1] + [("<mask>", 0.0)]
    assert len(vocab) == VOCAB_SIZE
    tok = XLMRobertaTokenizer(vocab=vocab, model_max_length=MAX_LENGTH)
    XLMR_DIR.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(XLMR_DIR))
    refs = []
    for p in PROMPTS:
        enc = tok(p, padding="max_length", max_length=MAX_LENGTH, truncation=True)
        refs.append({"prompt": p, "input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    return refs


def main():
    clip = make_clip()
    xlmr = make_xlmr()
    doc = {"generator": "models/scripts/make_tokenizer_fixtures.py", "transformers": transformers.__version__,
           "tokenizers": tokenizers.__version__, "max_length": MAX_LENGTH, "clip": clip, "xlmr": xlmr}
    REFS.parent.mkdir(parents=True, exist_ok=True)
    REFS.write_text(json.dumps(doc, ensure_ascii=False) + "\n", encoding="utf-8")
    for name, refs in (("clip", clip), ("xlmr", xlmr)):
        lens = [sum(1 for i in r["input_ids"]) for r in refs]
        print(name, "first ids:", refs[0]["input_ids"][:12])
    print(f"wrote {CLIP_DIR}, {XLMR_DIR}, {REFS}")


if __name__ == "__main__":
    main()
