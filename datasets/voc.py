"""The Pascal VOC layout (``--dataset_file voc --data_path DIR``), read as COCO ground truth in memory.

Layout under ``--data_path``::

    JPEGImages/<image id>.jpg          (or .png, .bmp, .tif, .webp)
    Annotations/<image id>.xml         <annotation><object><name/><difficult/><bndbox><xmin/>...</bndbox></object>
    ImageSets/Main/{train,val}.txt     one image id per line
    labels.txt                         optional: the class names, one per line, in category id order

Class names: ``labels.txt`` when it is there, else every ``<name>`` of the annotations of the images that
``train.txt`` and ``val.txt`` list, sorted; category id = position in that list (``datasets.layouts``). An image
without an annotation file, or with no ``<object>``, is a background image. VOC's pixel indices start at 1 and a
box includes its last pixel: ``xmin..xmax`` becomes COCO's ``x = xmin - 1``, ``width = xmax - xmin + 1`` (as
detectron2 reads VOC). ``<size>`` is not read: sizes come from the image files.

Difficult objects (``<difficult>1</difficult>``) become crowd regions (``iscrowd`` 1, ``difficult`` 1), as
``--remove_difficult`` makes them for COCO-format files, here by default: training leaves them out, and the COCO
evaluation neither counts them as objects to find nor counts detections on them as false positives (VOC's protocol
ignores them alike; COCO matches a detection to a crowd region by intersection over the detection's area, VOC by
IoU). Errors name the file and line: malformed XML, an ``<object>`` without ``<name>`` or a complete
``<bndbox>``, a coordinate that is not a number, a class name not in ``labels.txt``, a listed image without an
image file.
"""
import xml.parsers.expat
from dataclasses import dataclass, field
from pathlib import Path

from datasets.coco import CocoDetection
from datasets.image_file import BadImageError
from datasets.layouts import (
    IMAGE_SUFFIXES,
    SPLITS,
    GroundTruth,
    LayoutSplit,
    build_layout_dataset,
    check_split,
    read_text_lines,
    upright_size,
)

NAMES_FILE = "labels.txt"
EXPECTED = "JPEGImages/, Annotations/ and ImageSets/Main/{train,val}.txt (the Pascal VOC layout)"
BOX_KEYS = ("xmin", "ymin", "xmax", "ymax")


@dataclass
class XmlElement:
    """An XML element with the line its start tag is on, its text (stripped) and its child elements."""

    tag: str
    line: int
    text: str = ""
    children: list["XmlElement"] = field(default_factory=list)

    def child(self, tag: str) -> "XmlElement | None":
        """The first child element named ``tag``, or None."""
        return next((c for c in self.children if c.tag == tag), None)


def parse_xml(path: Path) -> XmlElement:
    """The root element of the XML file ``path``, each element with its line number; malformed XML is a
    ValueError naming the file, line and column."""
    parser = xml.parsers.expat.ParserCreate()
    top: list[XmlElement] = []
    open_elements: list[XmlElement] = []
    texts: list[list[str]] = []

    def start(tag: str, _attributes: dict) -> None:
        element = XmlElement(tag, parser.CurrentLineNumber)
        (open_elements[-1].children if open_elements else top).append(element)
        open_elements.append(element)
        texts.append([])

    def end(_tag: str) -> None:
        open_elements.pop().text = "".join(texts.pop()).strip()

    def text(data: str) -> None:
        if texts:
            texts[-1].append(data)

    parser.StartElementHandler, parser.EndElementHandler, parser.CharacterDataHandler = start, end, text
    try:
        with open(path, "rb") as f:
            parser.ParseFile(f)
    except xml.parsers.expat.ExpatError as exc:
        raise ValueError(f"annotation file {path}, line {exc.lineno}: not well-formed XML "
                         f"({xml.parsers.expat.ErrorString(exc.code)}, column {exc.offset + 1})") from None
    return top[0]


@dataclass
class VocObject:
    """One ``<object>``: its class name, box [x, y, w, h] in COCO's pixel coordinates, difficult flag and the
    line of its ``<name>``."""

    name: str
    box: list[float]
    difficult: bool
    line: int


def read_objects(path: Path) -> list[VocObject]:
    """The objects of the VOC annotation file ``path``; errors name the file and line."""
    root = parse_xml(path)
    if root.tag != "annotation":
        raise ValueError(f"annotation file {path}, line {root.line}: the root element is <{root.tag}>, not "
                         f"<annotation> (Pascal VOC)")
    objects = []
    for element in root.children:
        if element.tag != "object":
            continue
        where = f"annotation file {path}, line {element.line}"
        name = element.child("name")
        if name is None or not name.text:
            raise ValueError(f"{where}: <object> without a <name>")
        bndbox = element.child("bndbox")
        if bndbox is None:
            raise ValueError(f"{where}: <object> {name.text!r} without a <bndbox>")
        corners = []
        for key in BOX_KEYS:
            value = bndbox.child(key)
            if value is None:
                raise ValueError(f"annotation file {path}, line {bndbox.line}: <bndbox> without <{key}>")
            try:
                corners.append(float(value.text))
            except ValueError:
                raise ValueError(f"annotation file {path}, line {value.line}: <{key}> {value.text!r} is not a "
                                 f"number") from None
        xmin, ymin, xmax, ymax = corners
        objects.append(VocObject(name.text, [xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1],
                                 _difficult(element, path), name.line))
    return objects


def _difficult(element: XmlElement, path: Path) -> bool:
    flag = element.child("difficult")
    if flag is None or flag.text in ("", "0"):
        return False
    if flag.text == "1":
        return True
    raise ValueError(f"annotation file {path}, line {flag.line}: <difficult> {flag.text!r}; expected 0 or 1")


def listed_images(list_file: Path) -> list[tuple[str, int]]:
    """(image id, line number) of each non-blank line of an ``ImageSets/Main`` list; errors name the line."""
    if not list_file.is_file():
        raise FileNotFoundError(f"image list {list_file} not found (--dataset_file voc reads {EXPECTED})")
    listed, first_line = [], {}
    for number, line in enumerate(read_text_lines(list_file, "image list"), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 1:
            raise ValueError(f"image list {list_file}, line {number}: expected one image id, got {line.strip()!r}")
        if fields[0] in first_line:
            raise ValueError(f"image list {list_file}, line {number}: image id {fields[0]} is listed again (first "
                             f"on line {first_line[fields[0]]})")
        first_line[fields[0]] = number
        listed.append((fields[0], number))
    return listed


def names_file_names(path: Path) -> list[str]:
    """The class names of ``labels.txt``, one per non-blank line; a name given twice is an error naming the line."""
    names, first_line = [], {}
    for number, line in enumerate(read_text_lines(path, "class names file"), start=1):
        name = line.strip()
        if not name:
            continue
        if name in first_line:
            raise ValueError(f"class names file {path}, line {number}: {name!r} is listed again (first on line "
                             f"{first_line[name]})")
        first_line[name] = number
        names.append(name)
    if not names:
        raise ValueError(f"class names file {path} lists no class name")
    return names


def voc_class_names(root: Path) -> list[str]:
    """The class names of the VOC folder ``root``: ``labels.txt``'s in its order, else the sorted names of the
    objects in the annotation files of the images that ``ImageSets/Main/{train,val}.txt`` list."""
    if (root / NAMES_FILE).is_file():
        return names_file_names(root / NAMES_FILE)
    lists = [root / "ImageSets" / "Main" / f"{split}.txt" for split in SPLITS]
    names = set()
    for list_file in (path for path in lists if path.is_file()):
        for image_id, _ in listed_images(list_file):
            annotation = root / "Annotations" / f"{image_id}.xml"
            if annotation.is_file():
                names.update(obj.name for obj in read_objects(annotation))
    if not names:
        raise ValueError(f"no class names: the annotation files of the images listed in {' and '.join(map(str, lists))}"
                         f" name no object, and there is no {root / NAMES_FILE}")
    return sorted(names)


def _image_file(image_folder: Path, image_id: str) -> Path | None:
    """``JPEGImages/<image_id>.jpg``, else the first of the other IMAGE_SUFFIXES (lower or upper case), or None."""
    suffixes = [".jpg"] + [s for s in IMAGE_SUFFIXES if s != ".jpg"]
    candidates = [image_folder / f"{image_id}{suffix}" for suffix in suffixes + [s.upper() for s in suffixes]]
    return next((path for path in candidates if path.is_file()), None)


def read_voc(root: Path, image_set: str, skip_bad_images: bool = False) -> LayoutSplit:
    """Split ``image_set`` ('train' or 'val') of the VOC folder ``root`` as COCO ground truth (see the module
    docstring); ``skip_bad_images``: an image whose header cannot be read is left out instead of an error."""
    check_split(image_set)
    list_file = root / "ImageSets" / "Main" / f"{image_set}.txt"
    listed = listed_images(list_file)
    if not listed:
        raise ValueError(f"image list {list_file} lists no image")
    names = voc_class_names(root)
    category_of = {name: index for index, name in enumerate(names)}
    image_folder = root / "JPEGImages"
    ground_truth = GroundTruth(names, f"Pascal VOC layout {root}, {image_set} (datasets.voc)")
    skipped = []
    for image_id, line in listed:
        image = _image_file(image_folder, image_id)
        if image is None:
            raise FileNotFoundError(f"image list {list_file}, line {line}: image {image_id} not found (no "
                                    f"{image_folder / image_id}.jpg, .png, .bmp, .tif or .webp)")
        try:
            width, height = upright_size(image)
        except BadImageError as exc:
            if not skip_bad_images:
                raise
            skipped.append(str(exc))
            continue
        coco_image_id = ground_truth.add_image(image.name, width, height)
        annotation = root / "Annotations" / f"{image_id}.xml"
        for obj in read_objects(annotation) if annotation.is_file() else []:
            if obj.name not in category_of:
                raise ValueError(f"annotation file {annotation}, line {obj.line}: class name {obj.name!r} is not in "
                                 f"{root / NAMES_FILE} ({len(names)} names)")
            difficult = int(obj.difficult)
            ground_truth.add_box(coco_image_id, category_of[obj.name], obj.box, iscrowd=difficult,
                                 difficult=difficult)
    return LayoutSplit(ground_truth.data, image_folder, list_file, skipped)


def build(image_set: str, args, cache_share: tuple[int, int] = (0, 1)) -> CocoDetection:
    """Pascal VOC ``image_set`` ('train' or 'val') from ``args.data_path`` (see
    ``datasets.layouts.build_layout_dataset`` for the other flags)."""
    return build_layout_dataset(image_set, args, read_voc, EXPECTED, cache_share)
