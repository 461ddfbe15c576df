"""Colour matrices of real cameras, and the split of them into training, validation and test cameras.

:data:`CAMERAS` maps a camera's make and model to its ``ColorMatrix`` for CIE illuminant D65 in
dcraw's format: nine integers, the XYZ -> camera RGB matrix row by row, times 10000 (what a DNG
stores as ``ColorMatrix2`` and LibRaw as ``rgb_xyz_matrix``). The numbers are copied verbatim from
the ``dcraw_matrix`` entries of RawTherapee's ``camconst.json`` (Debian package ``rawtherapee-data``
5.9-1, ``/usr/share/rawtherapee/camconst.json``; RawTherapee, GPL-3.0), which collects them from
Adobe's DNG Converter and dcraw. Cameras whose matrix equals another listed camera's (the same
sensor under two names) were left out, so a held-out camera is never a training camera in disguise.

The cameras are split by name (:data:`TEST_CAMERAS`, :data:`VAL_CAMERAS`, the rest train), across
makes and sensor sizes, including smartphones: synthetic training data draws only training cameras
and the held-out set only test cameras (:func:`camera_split`).
"""

from __future__ import annotations

import numpy as np

from isplab.errors import IsplabError

#: name -> dcraw ``ColorMatrix`` (XYZ -> camera, D65) x 10000, row by row (camconst.json, RawTherapee 5.9)
CAMERAS: dict[str, tuple[int, ...]] = {
    "Canon EOS 5D Mark II": (4716, 603, -830, -7799, 15474, 2480, -1496, 1937, 6651),
    "Canon EOS 5D Mark III": (6722, -635, -963, -4287, 12460, 2028, -909, 2162, 5668),
    "Canon EOS 5D Mark IV": (6445, -366, -864, -4436, 12204, 2513, -953, 2496, 6348),
    "Canon EOS 6D": (7034, -804, -1014, -4420, 12564, 2058, -851, 1994, 5758),
    "Canon EOS 7D Mark II": (7268, -1082, -969, -4186, 11839, 2663, -825, 2029, 5839),
    "Canon EOS 80D": (7457, -672, -937, -4849, 12495, 2643, -1213, 2354, 5492),
    "Canon EOS 550D": (6941, -1164, -857, -3825, 11597, 2534, -416, 1540, 6039),
    "Canon EOS 750D": (6362, -823, -847, -4426, 12109, 2616, -743, 1857, 5635),
    "Canon EOS R": (8293, -1789, -1094, -5025, 12925, 2327, -1199, 2769, 6108),
    "Canon EOS R5": (9766, -2953, -1254, -4276, 12116, 2433, -437, 1336, 5131),
    "Canon PowerShot G7 X": (9602, -3823, -937, -2984, 11495, 1675, -407, 1414, 5049),
    "Nikon D700": (8139, -2171, -664, -8748, 16541, 2296, -1924, 2008, 8093),
    "Nikon D750": (9020, -2890, -715, -4535, 12436, 2348, -934, 1918, 7086),
    "Nikon D810": (9369, -3195, -791, -4488, 12430, 2301, -893, 1796, 6872),
    "Nikon D850": (10405, -3755, -1270, -5461, 13787, 1792, -1040, 2015, 6785),
    "Nikon D7200": (8322, -3112, -1047, -6367, 14342, 2179, -988, 1638, 6394),
    "Nikon D5300": (6988, -1384, -714, -5631, 13410, 2447, -1485, 2204, 7318),
    "Nikon Z 6": (8210, -2534, -683, -5355, 13338, 2212, -1143, 1928, 6464),
    "Nikon Z 50": (11640, -4829, -1079, -5107, 13006, 2325, -972, 1711, 7380),
    "Nikon 1 J5": (7520, -2519, -645, -3844, 12102, 1945, -914, 2249, 6835),
    "Sony ILCE-7M3": (7374, -2389, -551, -5435, 13162, 2519, -1006, 1795, 6552),
    "Sony ILCE-7RM3": (6640, -1847, -503, -5238, 13010, 2474, -993, 1673, 6526),
    "Sony ILCE-6000": (5991, -1456, -455, -4764, 12135, 2980, -707, 1424, 6701),
    "Sony ILCE-9": (6389, -1703, -378, -4562, 12265, 2587, -670, 1489, 6550),
    "Sony DSC-RX100M5A": (11176, -4700, -965, -4004, 12184, 2032, -764, 1726, 5876),
    "Sony DSC-RX10M4": (7699, -2566, -629, -2967, 11270, 1928, -378, 1286, 4807),
    "FUJIFILM X-A3": (12407, -5222, -1086, -2971, 11116, 2120, -294, 1029, 5284),
    "FUJIFILM X-A10": (11540, -4999, -991, -2949, 10963, 2278, -382, 1049, 5605),
    "FUJIFILM GFX 100": (16212, -8423, -1583, -4336, 12583, 1937, -195, 726, 6199),
    "Panasonic DC-G9": (7685, -2375, -634, -3688, 11700, 2249, -748, 1545, 5111),
    "Panasonic DMC-GX80": (7771, -3020, -629, -4029, 11950, 2345, -822, 1976, 6119),
    "Panasonic DC-S1": (9744, -3905, -779, -4899, 12807, 2324, -798, 1630, 5827),
    "Panasonic DMC-LX100": (8844, -3538, -768, -3709, 11762, 2200, -698, 1792, 5220),
    "Panasonic DMC-FZ1000": (7830, -2696, -764, -3325, 11667, 1865, -641, 1712, 4824),
    "OLYMPUS E-M1MarkII": (9383, -3170, -764, -2457, 10702, 2020, -384, 1236, 5552),
    "OLYMPUS E-M10": (8380, -2630, -639, -2887, 10725, 2496, -628, 1427, 5437),
    "OLYMPUS PEN-F": (9476, -3182, -765, -2613, 10958, 1893, -449, 1315, 5268),
    "OLYMPUS TG-5": (10899, -3833, -1082, -2112, 10736, 1575, -267, 1452, 5269),
    "RICOH PENTAX K-1": (8596, -2981, -639, -4202, 12045, 2431, -685, 1424, 6122),
    "RICOH PENTAX KP": (7357, -2031, -1320, -4842, 13555, 1349, -1538, 2416, 5736),
    "LEICA Q (Typ 116)": (10068, -4043, -1068, -5319, 14268, 1044, -765, 1701, 6522),
    "LEICA SL (Typ 601)": (11492, -4930, -1188, -5593, 14673, 873, -609, 1474, 6343),
    "Samsung NX1": (10686, -4042, -1052, -3595, 13238, 276, -464, 1259, 5931),
    "LG mobile LG-H815": (5859, 547, -1250, -6484, 15547, 547, -2422, 5625, 3906),
    "HUAWEI DLI-L22": (6984, -812, -975, -4792, 13481, 1381, -1056, 2355, 4873),
    "samsung SM-N960F": (6632, -622, -1104, -5659, 14819, 773, -1846, 4465, 4967),
    "XIAOYI M1": (7158, -1911, -606, -3603, 10669, 2530, -659, 1236, 5530),
    "Hasselblad H4D-40": (6159, -1402, -177, -5439, 12762, 3007, -955, 2200, 7104),
    "Phase One IQ180": (6294, 686, -712, -5435, 13417, 2211, -1006, 2435, 5042),

}

#: cameras held out for the test set (the real-photograph benchmark), never used in training
TEST_CAMERAS = (
    "Canon EOS 6D", "Nikon D750", "Sony ILCE-7M3", "FUJIFILM X-A3", "Panasonic DC-G9", "OLYMPUS E-M10",
    "LG mobile LG-H815", "RICOH PENTAX KP", "Canon PowerShot G7 X", "Nikon Z 50",
)
#: cameras held out for validation
VAL_CAMERAS = ("Canon EOS 80D", "Nikon D5300", "Sony ILCE-6000", "samsung SM-N960F", "Panasonic DMC-LX100", "OLYMPUS TG-5")
SPLITS = ("train", "val", "test", "all")


def xyz_to_camera(name: str) -> np.ndarray:
    """The named camera's XYZ -> camera RGB matrix ``(3, 3)`` float64 (dcraw's numbers / 10000)."""
    if name not in CAMERAS:
        raise IsplabError(f"unknown camera {name!r}: expected one of the {len(CAMERAS)} in isplab.data.cameras.CAMERAS")
    return np.array(CAMERAS[name], dtype=np.float64).reshape(3, 3) / 10000.0


def camera_split(split: str) -> tuple[str, ...]:
    """The camera names of ``split``: ``"train"``, ``"val"``, ``"test"`` (disjoint) or ``"all"``."""
    held_out = set(TEST_CAMERAS) | set(VAL_CAMERAS)
    splits = {
        "train": tuple(name for name in CAMERAS if name not in held_out),
        "val": VAL_CAMERAS,
        "test": TEST_CAMERAS,
        "all": tuple(CAMERAS),
    }
    if split not in splits:
        raise IsplabError(f"unknown camera split {split!r}: expected one of {', '.join(SPLITS)}")
    return splits[split]
