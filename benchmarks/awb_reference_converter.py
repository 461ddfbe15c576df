"""Run Raspberry Pi's reference converter.py (repository raspberrypi/awb_nn, unmodified) on a folder of DNGs.

For regenerating the reference numbers in tests/workflows/awb/test_convert.py; the reference code is
not part of isplab: check it out yourself and pass its folder as REFERENCE_DIR.

pyexiv2 (py3exiv2, a C++ extension) is not installable here: a stand-in module with the same
calls the reference makes (ImageMetadata(path).read(), ["Exif.Image.ExposureTime"].value,
["Exif.Image.ISOSpeedRatings"].value, get_aperture()) reads the exact tag values with exiftool -n.
Usage: python benchmarks/awb_reference_converter.py REFERENCE_DIR DNG_DIR OUT_DIR TARGET TUNING_ROOT
"""
import json, os, subprocess, sys, types
from fractions import Fraction
from pathlib import Path

class _Tag:
    def __init__(self, value): self.value = value

class ImageMetadata:
    def __init__(self, path): self.path = path
    def read(self):
        self.tags = json.loads(subprocess.check_output(["exiftool", "-n", "-j", self.path]))[0]
    def __getitem__(self, key):
        name = {"Exif.Image.ExposureTime": "ExposureTime", "Exif.Image.ISOSpeedRatings": "ISO"}[key]
        if name not in self.tags:
            raise KeyError(key)
        value = self.tags[name]
        return _Tag(Fraction(value).limit_denominator(10**9) if name == "ExposureTime" else value)
    def get_aperture(self):
        return self.tags.get("FNumber")  # None: Pi DNGs (and isplab's synthetic ones) record no aperture

shim = types.ModuleType("pyexiv2"); shim.ImageMetadata = ImageMetadata
sys.modules["pyexiv2"] = shim
reference_dir, dng_dir, out_dir, tuning_root = (str(Path(p).resolve()) for p in (*sys.argv[1:4], sys.argv[5]))
target = sys.argv[4]
sys.path.insert(0, reference_dir)
os.chdir(tuning_root)  # Tuning.SEARCH_PATH starts with "." : <cwd>/<target>/<sensor>.json
import converter
target = target.upper()
resize = (16, 12) if target == "VC4" else (32, 32)
converter.process_folder(Path(dng_dir), Path(out_dir), target, resize, 0.0, False)
