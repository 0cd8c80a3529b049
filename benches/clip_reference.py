#!/usr/bin/env python3
"""Issue 16's CLIP benchmark, the reference side (benches/clip.sh runs it beside
benches/clip.rs).

    clip_reference.py write --models DIR        # the model and the images, once
    clip_reference.py transformers --models DIR # images/s, one JSON line per batch size

`write` saves a CLIPModel shaped like openai/clip-vit-base-patch32's vision tower (hidden 768,
12 layers, 12 heads, MLP 3072, 224x224 pixels in 32x32 patches, projection 512) with a small
text tower (2 layers; it is not measured), random weights as transformers initializes them,
its CLIPImageProcessor config (shortest edge 224, center crop 224, bicubic), and 32 test
images: 640x480 JPEGs (quality 90) of smooth patterns and noise, so every image is decoded,
resized and cropped as a photo would be.

`transformers` times, from the JPEG bytes to normalized `get_image_features`: Pillow's decode,
the processor transformers picks (`AutoImageProcessor`: the torchvision backend when
torchvision is installed) and the model, on the CPU in f32 under `torch.inference_mode()`
with torch's default threads; batch 1 (the 32 images one at a time) and batch 32 (one call).
Median of 3 runs after a warm-up.
"""

import argparse
import io
import json
import os
import statistics
import time

import numpy as np
import PIL.Image
import torch
import transformers
from transformers import AutoImageProcessor, CLIPConfig, CLIPImageProcessor, CLIPModel

IMAGES = 32


def write(models):
    out = os.path.join(models, "clip-b32")
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=2, num_attention_heads=8),
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           image_size=224, patch_size=32),
        projection_dim=512,
    )
    CLIPModel(config).eval().save_pretrained(out, safe_serialization=True)
    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(out)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:480, 0:640].astype(np.float64)
    images = os.path.join(models, "clip-images")
    os.makedirs(images, exist_ok=True)
    for i in range(IMAGES):
        planes = [127 + 90 * np.sin(rng.uniform(0.01, 0.05) * x + c) * np.cos(rng.uniform(0.01, 0.05) * y - c)
                  + rng.normal(0, 10, (480, 640)) for c in range(3)]
        arr = np.clip(np.stack(planes, -1), 0, 255).astype(np.uint8)
        PIL.Image.fromarray(arr).save(os.path.join(images, f"{i:02}.jpg"), quality=90)


def transformers_bench(models):
    path = os.path.join(models, "clip-b32")
    model = CLIPModel.from_pretrained(path).eval()
    processor = AutoImageProcessor.from_pretrained(path)
    images_dir = os.path.join(models, "clip-images")
    blobs = [open(os.path.join(images_dir, f), "rb").read() for f in sorted(os.listdir(images_dir))]

    def embed(batch):
        pil = [PIL.Image.open(io.BytesIO(b)) for b in batch]
        pixels = processor(images=pil, return_tensors="pt")["pixel_values"]
        out = model.get_image_features(pixel_values=pixels)
        features = out.pooler_output if hasattr(out, "pooler_output") else out
        return torch.nn.functional.normalize(features, dim=-1)

    with torch.inference_mode():
        for batch in (1, IMAGES):
            embed(blobs[:batch])  # warm-up
            runs = []
            for _ in range(3):
                started = time.perf_counter()
                for i in range(0, IMAGES, batch):
                    embed(blobs[i:i + batch])
                runs.append(IMAGES / (time.perf_counter() - started))
            print(json.dumps({"bench": "clip", "impl": "transformers", "batch": batch,
                              "processor": type(processor).__name__, "images_per_s": round(statistics.median(runs), 2),
                              "runs": [round(r, 2) for r in runs], "torch_threads": torch.get_num_threads(),
                              "transformers": transformers.__version__, "torch": torch.__version__}), flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["write", "transformers"])
    p.add_argument("--models", required=True)
    a = p.parse_args()
    write(a.models) if a.what == "write" else transformers_bench(a.models)
