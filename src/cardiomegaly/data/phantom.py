"""Synthetic frontal chest films with a known cardiothoracic ratio: for demos and tests only.

Each phantom has lung fields, heart and mediastinum, spine, ribs, clavicles, diaphragm domes,
soft tissue, a side marker, noise, blur, and exposure and position variation, PA or AP. The
cardiothoracic ratio (CTR = widest heart diameter / widest inner thoracic diameter) is drawn
between about 0.38 and 0.62 and the label is CTR > 0.5, the clinical criterion on a PA film.
Nothing here is a medical claim: the phantoms exist to exercise the pipeline end to end.

    >>> synthesize("/tmp/phantoms", n=8, size=128, seed=0)          # doctest: +SKIP
    PosixPath('/tmp/phantoms/phantoms.csv')
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from ..fileio import atomic_open, atomic_write_text
from ..progress import progress_bar
from ..segment.ctr import MASK_CLASSES

log = logging.getLogger(__name__)

CTR_RANGE = (0.38, 0.62)


@dataclass(frozen=True)
class Phantom:
    """One rendered film and its ground truth (box in pixels: x, y, w, h)."""

    image: np.ndarray  # uint8, size x size
    ctr: float
    label: int
    view: str
    box: tuple[int, int, int, int]
    #: Boolean masks by organ (MASK_CLASSES): heart, and the patient's left and right lungs.
    masks: dict[str, np.ndarray] = field(default_factory=dict, compare=False)


def _soft(level: np.ndarray, eps: float) -> np.ndarray:
    """Soft inside-mask of ``level <= 0`` with an edge about ``eps`` wide."""
    return 0.5 * (1.0 - np.tanh(level / eps))


def _ellipse(
    u: np.ndarray, v: np.ndarray, cu: float, cv: float, ru: float, rv: float
) -> np.ndarray:
    """Approximate signed distance to an ellipse (negative inside)."""
    return (np.sqrt(((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2) - 1.0) * min(ru, rv)


def _blur(arr: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur (edge padded) for small sigmas, in pixels."""
    if sigma <= 0.2:
        return arr
    radius = max(1, int(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    out = arr
    for axis in (0, 1):
        padded = np.pad(out, [(radius, radius) if a == axis else (0, 0) for a in (0, 1)], "edge")
        n = out.shape[axis]
        out = sum(w * np.take(padded, np.arange(i, i + n), axis=axis) for i, w in enumerate(taps))
    return out


def render_phantom(
    rng: np.random.Generator, size: int, patient: dict, ctr: float, view: str = "PA"
) -> Phantom:
    """Draw one film of ``patient`` (anatomy drawn once per patient) with the given CTR."""
    ap = view == "AP"
    # Position and exposure vary from film to film.
    theta = math.radians(rng.normal(0, 2.0))
    scale = rng.uniform(0.80, 0.90) * (1.04 if ap else 1.0)
    tx, ty = rng.normal(0, 0.025), rng.normal(0.06, 0.025)
    inspiration = rng.normal(0, 0.03) + (0.05 if ap else 0.0)  # AP films are shallower

    px = (np.arange(size) + 0.5) / size * 2 - 1
    x, y = np.meshgrid(px, px)
    cos, sin = math.cos(theta), math.sin(theta)
    # Patient coordinates (u to the image right = patient's left on a PA film; v downwards).
    u = (cos * (x - tx) + sin * (y - ty)) / scale
    v = (-sin * (x - tx) + cos * (y - ty)) / scale
    eps = 2.5 / size  # edge width: about a pixel at any size

    half_t = patient["thorax"]  # inner thoracic half-width: 2 * half_t is the CTR denominator
    body = patient["body"]
    apex, d_right = -0.80, patient["diaphragm"] + inspiration
    d_left = d_right + 0.05

    # Body: torso with rounded shoulders, neck, upper arms.
    shoulder = np.clip((-0.60 - v) / 0.32, 0, 1)
    torso_half = body * np.sqrt(np.clip(1 - shoulder**2, 0, 1))
    torso_half = np.maximum(torso_half, np.where(v < -0.5, 0.17, 0))
    torso = _soft(np.abs(u) - torso_half, 3 * eps)
    arms = _soft(np.abs(np.abs(u) - (body + 0.1)) - 0.07, 3 * eps) * _soft(v - 0.35, 0.05)
    thickness = torso * np.sqrt(np.clip(1 - (u / (body + 0.05)) ** 2, 0.05, 1)) + 0.5 * arms

    # Rib cage inner margin: rounded apex, widest from the lower third down.
    v_wide = 0.25
    frac = np.clip((v_wide - v) / (v_wide - apex), 0, 1)
    cage_half = half_t * np.sqrt(np.clip(1 - frac**2.4, 0, 1))
    cage = np.abs(u) - cage_half

    # Diaphragm domes: right (image left) higher; costophrenic angles deepest laterally.
    dome_h = patient["dome"]
    side = np.where(u < 0, -1.0, 1.0)
    d_side = np.where(u < 0, d_right, d_left)
    dome = d_side - dome_h * (1 - ((u - side * 0.45 * half_t) / (0.62 * half_t)) ** 2)
    below_diaphragm = _soft(dome - v, eps * 2)

    # Heart: right border (image left) and left ventricle; widths fixed by the CTR.
    width = ctr * 2 * half_t
    shift = patient["heart_shift"]
    u_r, u_l = -0.34 * width + shift, 0.66 * width + shift
    v_heart = d_right - 0.16
    height = patient["heart_height"] * (0.8 + 0.4 * width)
    ra = _ellipse(u, v, u_r + 0.17 * width, v_heart, 0.17 * width, 0.42 * height)
    lv = _ellipse(u, v, u_l - 0.34 * width, v_heart + 0.02, 0.34 * width, 0.48 * height)
    core = _ellipse(u, v, (u_r + u_l) / 2 - 0.02, v_heart - 0.1, 0.38 * width, 0.6 * height)
    heart_level = np.minimum(np.minimum(ra, lv), core)
    heart = _soft(heart_level, 1.5 * eps)

    # Mediastinum with the aortic knob on the patient's left.
    med_half = 0.085 + 0.02 * np.clip((v + 0.3) / 0.4, 0, 1)
    mediastinum = np.maximum(np.abs(u - 0.01) - med_half, v - v_heart)  # band above heart
    knob = _ellipse(u, v, 0.09, -0.36, 0.065, 0.06)
    mediastinum = np.minimum(np.maximum(mediastinum, -1), knob)

    lung_level = np.maximum.reduce([cage, apex - v, v - dome, -heart_level, -mediastinum])
    lungs = _soft(lung_level, 2 * eps) * torso
    air_depth = np.sqrt(np.clip(1 - (u / (half_t + 0.05)) ** 2, 0, 1))

    # Vessels: branching trees from the hila, visible inside the lungs only.
    vessels = Image.new("F", (size, size), 0.0)
    draw = ImageDraw.Draw(vessels)

    def to_px(uu: float, vv: float) -> tuple[float, float]:
        xx = cos * uu * scale - sin * vv * scale + tx
        yy = sin * uu * scale + cos * vv * scale + ty
        return (xx + 1) / 2 * size, (yy + 1) / 2 * size

    for hilum_u in (-0.13 + shift * 0.5, 0.14 + shift * 0.5):
        direction = np.sign(hilum_u)
        stack = [(hilum_u, -0.12, math.atan2(rng.uniform(-1, 1), direction), 0.012, 0)]
        while stack:
            uu, vv, angle, w, depth = stack.pop()
            length = rng.uniform(0.06, 0.14) * (0.85**depth)
            nu, nv = uu + length * math.cos(angle), vv + length * math.sin(angle)
            draw.line(
                [to_px(uu, vv), to_px(nu, nv)],
                fill=0.7 * 0.85**depth,
                width=max(1, round(w * size / 2)),
            )
            if depth < 5:
                for _ in range(2):
                    stack.append((nu, nv, angle + rng.normal(0, 0.5), w * 0.72, depth + 1))
    vessel_map = _blur(np.asarray(vessels, dtype=np.float64), 0.6 * size / 256)

    # Bones: spine, posterior and anterior ribs, clavicles, humeral heads, scapulae on AP.
    spine_level = np.abs(u - 0.005) - 0.055
    spine = _soft(spine_level, 2 * eps) * (
        1 - 0.35 * _soft(np.abs(((v + 1) % 0.088) - 0.044) - 0.008, eps)
    )
    ribs = np.zeros_like(u)
    au = np.abs(u)
    s = np.clip((au - 0.06) / half_t, 0, 1.12)
    lateral = _soft(au - (half_t + 0.06), 2 * eps) * _soft(0.06 - au, eps * 2)
    for k in range(10):
        v0 = apex + 0.02 + k * patient["rib_gap"] * (0.85 + 0.04 * k)  # wider apart below
        centre = v0 - 0.12 * s + 0.55 * s**2
        band = _soft(np.abs(v - centre) - 0.022, eps * 1.5)
        cortex = _soft(np.abs(np.abs(v - centre) - 0.02) - 0.004, eps)
        ribs += (0.55 * band + 0.35 * cortex) * lateral
        va = v0 + 0.33 - 0.22 * (1 - s)
        anterior = _soft(np.abs(v - va) - 0.018, eps * 2) * _soft(0.3 - s, 0.02) * lateral
        ribs += 0.15 * anterior * (s > 0.3)
    ribs = np.minimum(ribs, 1.0)
    tilt = 0.02 if ap else -0.10  # AP: clavicles project higher and more horizontal
    t = np.clip((au - 0.06) / 0.5, 0, 1)
    clav_centre = -0.70 + tilt * t + 0.025 * np.sin(2 * math.pi * t) - (0.06 if ap else 0)
    clavicles = (
        _soft(np.abs(v - clav_centre) - 0.025, 2 * eps) * _soft(au - 0.58, eps * 2) * (au > 0.05)
    )
    humeri = _soft(_ellipse(au, v, body + 0.05, -0.68, 0.11, 0.12), 2 * eps)
    scapulae = _soft(_ellipse(au, v, half_t + 0.02, -0.45, 0.2, 0.3), 3 * eps) * 0.5 if ap else 0.0

    # Abdomen below the domes (liver, spleen) and the gastric bubble under the left dome.
    abdomen = below_diaphragm * torso * 0.12
    trachea = _soft(np.abs(u - 0.005) - 0.022, eps * 2) * _soft(v + 0.22, 0.02) * torso
    bubble = _soft(_ellipse(u, v, 0.32 * half_t, d_left + 0.09, 0.1, 0.05), 2 * eps) * torso
    breasts = 0.0
    if patient["sex"] == "F":
        breasts = 0.06 * _soft(_ellipse(au, v, 0.42, 0.42, 0.32, 0.24), 0.02) * torso

    attenuation = (
        0.62 * thickness
        - 0.40 * lungs * (0.6 + 0.4 * air_depth)
        + 0.08 * heart * (1 - below_diaphragm)
        + 0.25 * vessel_map * lungs
        - 0.10 * trachea
        + 0.22 * spine * torso * (1 - 0.5 * heart)
        + 0.10 * ribs
        + 0.32 * clavicles
        + 0.45 * humeri
        + 0.08 * scapulae
        + abdomen
        - 0.25 * bubble
        + breasts
    )
    attenuation = np.clip(attenuation, 0, None)
    film = 1 - np.exp(-patient["kv"] * rng.uniform(0.85, 1.15) * attenuation)
    film = film / (1 - math.exp(-patient["kv"] * 1.0))
    gamma = rng.uniform(0.8, 1.25) * (1.1 if ap else 1.0)
    film = np.clip(film, 0, 1) ** gamma
    film = film * (1 + 0.08 * rng.normal() * y)  # heel effect: exposure falls off along one axis
    film = _blur(film, rng.uniform(0.4, 1.2) * size / 512)
    film = film + rng.normal(0, rng.uniform(0.008, 0.025), film.shape)
    image = Image.fromarray(np.clip(film * 255, 0, 255).astype(np.uint8), mode="L")
    _marker(image, view, rng)

    # Ground truth: the CTR is fixed by construction; the box is the visible cardiac silhouette.
    visible = (heart_level < 0) & (v < dome + 0.02)
    rows, cols = np.nonzero(visible)
    box = (
        int(cols.min()),
        int(rows.min()),
        int(cols.max() - cols.min() + 1),
        int(rows.max() - rows.min() + 1),
    )
    true_ctr = (u_l - u_r) / (2 * half_t)
    # Masks as the JSRT/SCR ones are drawn: the whole heart silhouette, and each lung field
    # (the patient's left lung is on the image right, u > 0, on a PA film).
    lung = (lungs > 0.5) & (torso > 0.5)
    masks = {"heart": (heart_level < 0) & (v < dome + 0.02),
             "left_lung": lung & (u > 0.01), "right_lung": lung & (u <= 0.01)}  # fmt: skip
    return Phantom(np.asarray(image), float(true_ctr), int(true_ctr > 0.5), view, box, masks)


def _marker(image: Image.Image, view: str, rng: np.random.Generator) -> None:
    """A lead side marker: 'L' over the patient's left (image right), 'AP' on portable films."""
    size = image.size[0]
    draw = ImageDraw.Draw(image)
    font_px = max(8, size // 24)
    try:
        font = ImageFont.load_default(size=font_px)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        font = ImageFont.load_default()
    x = int(size * rng.uniform(0.80, 0.88))
    y = int(size * rng.uniform(0.04, 0.10))
    draw.rectangle([x - 2, y - 2, x + font_px, y + font_px + 2], fill=30)
    draw.text((x + 1, y), "L", fill=235, font=font)
    if view == "AP":
        draw.text((int(size * 0.06), int(size * 0.05)), "AP PORTABLE", fill=225, font=font)


def _draw_patients(n: int, seed: int) -> list[tuple[int, int]]:
    """(patient, follow-up) for each of ``n`` films: 1 to 3 films per patient."""
    rng = np.random.default_rng([seed, 0])
    films: list[tuple[int, int]] = []
    patient = 0
    while len(films) < n:
        for follow in range(int(rng.choice([1, 1, 1, 2, 2, 3]))):
            films.append((patient, follow))
        patient += 1
    return films[:n]


def _patient_anatomy(seed: int, patient: int) -> dict:
    rng = np.random.default_rng([seed, 1, patient])
    sex = "F" if rng.random() < 0.5 else "M"
    return {
        "sex": sex,
        "age": int(rng.integers(18, 90)),
        "thorax": rng.uniform(0.58, 0.70),
        "body": rng.uniform(0.80, 0.92),
        "diaphragm": rng.uniform(0.30, 0.42),
        "dome": rng.uniform(0.16, 0.24),
        "heart_shift": rng.normal(0.01, 0.015),
        "heart_height": rng.uniform(0.55, 0.65),
        "rib_gap": rng.uniform(0.095, 0.115),
        "kv": rng.uniform(1.4, 2.0),
        "ap_rate": 0.3,
        # CTR drawn per patient, uniform over the range so borderline cases exist; AP films
        # of the same patient come out slightly larger, as magnification makes them.
        "ctr": rng.uniform(*CTR_RANGE),
    }


def sample_films(n: int, size: int, seed: int = 0) -> np.ndarray:
    """``n`` phantom films (uint8, n x size x size) rendered in memory: realistic sample inputs
    for checks such as an export's parity, written nowhere.

    >>> sample_films(2, 75).shape
    (2, 75, 75)
    """
    films = []
    for i in range(n):
        anatomy = _patient_anatomy(seed, i)
        rng = np.random.default_rng([seed, 3, i])
        films.append(render_phantom(rng, size, anatomy, anatomy["ctr"], "PA").image)
    return np.stack(films)


def _film(job: tuple[int, int, int, int, int, Path]) -> tuple[dict, Phantom]:
    """Render and write film ``i``; everything random comes from (seed, i), so order is free."""
    i, patient, follow, seed, size, out = job
    anatomy = _patient_anatomy(seed, patient)
    rng = np.random.default_rng([seed, 2, i])
    view = "AP" if rng.random() < anatomy["ap_rate"] else "PA"
    ctr = anatomy["ctr"] + rng.normal(0, 0.012) + (0.02 if view == "AP" else 0.0)
    phantom = render_phantom(rng, size, anatomy, float(np.clip(ctr, 0.36, 0.64)), view)
    name = f"images/{patient:05d}_{follow:03d}.png"
    with atomic_open(out / name, "wb") as f:
        Image.fromarray(phantom.image, mode="L").save(f, format="PNG")
    for organ, mask in phantom.masks.items():  # masks/<class>/NAME.png, 255 inside (JSRT layout)
        with atomic_open(out / "masks" / organ / Path(name).name, "wb") as f:
            Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(f, format="PNG")
    row = {
        "image": name,
        "patient": f"{patient:05d}",
        "follow_up": follow,
        "label": phantom.label,
        "ctr": round(phantom.ctr, 4),
        "view": phantom.view,
        "sex": anatomy["sex"],
        "age": anatomy["age"],
        "box_x": phantom.box[0],
        "box_y": phantom.box[1],
        "box_w": phantom.box[2],
        "box_h": phantom.box[3],
    }
    return row, phantom


def synthesize(
    out: str | Path,
    n: int = 600,
    size: int = 512,
    seed: int = 0,
    progress: bool = True,
    workers: int | None = None,
) -> Path:
    """Write ``n`` phantom PNGs, ``phantoms.csv`` and ``contact_sheet.png`` into ``out``.

    Deterministic: the same ``n``, ``size`` and ``seed`` give the same files, however many
    worker processes render them (default: one per core).

    >>> synthesize("/tmp/phantoms", n=8, size=128)                  # doctest: +SKIP
    PosixPath('/tmp/phantoms/phantoms.csv')
    """
    out = Path(out)
    for folder in ("images", *(f"masks/{organ}" for organ in MASK_CLASSES)):
        (out / folder).mkdir(parents=True, exist_ok=True)
    jobs = [(i, p, f, seed, size, out) for i, (p, f) in enumerate(_draw_patients(n, seed))]
    workers = min(workers or os.cpu_count() or 1, max(1, n // 8))
    with contextlib.ExitStack() as stack:
        mapped = map(_film, jobs)
        if workers > 1:  # spawn, not fork: the parent may hold torch's thread pools
            context = multiprocessing.get_context("spawn")
            pool = stack.enter_context(ProcessPoolExecutor(workers, mp_context=context))
            mapped = pool.map(_film, jobs, chunksize=4)
        bar = progress_bar(mapped, total=n, desc="phantoms", enabled=progress)
        results = list(bar)
    rows = [row for row, _ in results]
    csv = out / "phantoms.csv"
    with atomic_open(out / "contact_sheet.png", "wb") as f:
        contact_sheet([(phantom, row) for row, phantom in results[:24]]).save(f, format="PNG")
    atomic_write_text(
        out / "README.txt",
        f"Synthetic chest-film phantoms: cardiomegaly synth --n {n} --size {size} --seed {seed}.\n"
        "Label = cardiothoracic ratio (ctr) > 0.5; box = heart (x, y, w, h pixels).\n"
        "masks/<organ>/NAME.png: heart, left_lung, right_lung (the patient's), 255 inside.\n"
        "For demos and tests only: not radiographs of anyone, never for medical claims.\n",
    )
    # The CSV goes last: its presence marks a complete folder.
    with atomic_open(csv, "w", encoding="utf-8", newline="") as f:
        pd.DataFrame(rows).to_csv(f, index=False)
    log.info("wrote %d phantoms to %s", n, out)
    return csv


def contact_sheet(items: list[tuple[Phantom, dict]], thumb: int = 200) -> Image.Image:
    """A grid of films with the heart box and CTR drawn on each (green: CTR <= 0.5, red: > 0.5)."""
    cols = min(6, max(1, len(items)))
    rows = max(1, math.ceil(len(items) / cols))
    sheet = Image.new("RGB", (cols * thumb, rows * (thumb + 18)), (20, 20, 20))
    draw = ImageDraw.Draw(sheet)
    for i, (phantom, row) in enumerate(items):
        size = phantom.image.shape[0]
        k = thumb / size
        x0, y0 = (i % cols) * thumb, (i // cols) * (thumb + 18)
        sheet.paste(Image.fromarray(phantom.image).convert("RGB").resize((thumb, thumb)), (x0, y0))
        bx, by, bw, bh = phantom.box
        colour = (230, 60, 60) if phantom.label else (60, 200, 90)
        draw.rectangle(
            [x0 + bx * k, y0 + by * k, x0 + (bx + bw) * k, y0 + (by + bh) * k],
            outline=colour,
            width=2,
        )
        caption = (
            f"{row['patient']} {phantom.view} CTR {phantom.ctr:.2f} {'+' if phantom.label else '-'}"
        )
        draw.text((x0 + 4, y0 + thumb + 3), caption, fill=colour)
    return sheet
