"""Dataset importers: one module per source format, registered by name.

Owns: the registry and the shared import run (registry), BUSI, BrEaST-Lesions_USG, class folders, tables and DICOM, and ``buscad data import``. May import: buscad.data (io, manifest), buscad.utils, buscad.errors.

Importers: turn a public dataset, a folder tree, a table or DICOM files into a manifest.

Each importer is a function registered under a format name with
:func:`register_importer`; it scans its source and returns candidate rows
(absolute paths, a label, ids and any clinical columns). :func:`import_dataset`
then checks every row by actually reading its image (:func:`~buscad.data.io.read_image`)
and masks (:func:`~buscad.data.io.read_mask` with the image's shape). A row that
fails is skipped with its reason and the import goes on; the kept rows are
written as a manifest whose paths are relative to the manifest file.

Formats
-------
``busi``
    BUSI class folders (Al-Dhabyani et al., Data in Brief 28:104863, 2020).
``breast-lesions-usg``
    BrEaST-Lesions_USG with its clinical CSV (Pawlowska et al., Sci Data 11:148, 2024).
``folders``
    One folder per class, masks found beside the images by a name pattern.
``csv``
    Any CSV/TSV/XLSX/Parquet table with a path and a label column.
``dicom``
    A folder of DICOM files, de-identified (see :func:`import_dicom`).

Command line: ``buscad data import FORMAT SOURCE -o MANIFEST``.
"""

from __future__ import annotations

from buscad._lazy import lazy_exports

#: Public name -> defining module, imported on first use (PEP 562).
_LAZY = {
    "BREAST_COLUMNS": "buscad.data.importers.breast",
    "DICOM_FIELDS": "buscad.data.importers.dicom",
    "IMAGE_INFO_COLUMNS": "buscad.data.importers.registry",
    "IMPORTERS": "buscad.data.importers.registry",
    "ImportContext": "buscad.data.importers.registry",
    "ImportReport": "buscad.data.importers.registry",
    "Importer": "buscad.data.importers.registry",
    "MASK_COLUMNS": "buscad.data.importers.registry",
    "PATH_COLUMNS": "buscad.data.importers.registry",
    "SALT_ENV": "buscad.data.importers.registry",
    "import_breast_lesions_usg": "buscad.data.importers.breast",
    "import_busi": "buscad.data.importers.busi",
    "import_csv": "buscad.data.importers.tables",
    "import_dataset": "buscad.data.importers.registry",
    "import_dicom": "buscad.data.importers.dicom",
    "import_folders": "buscad.data.importers.folders",
    "importer_options": "buscad.data.importers.registry",
    "register_importer": "buscad.data.importers.registry",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())

# Each format module registers its importer when imported: load them all, so that
# IMPORTERS is complete whichever of the package's modules is imported first.
# isort: off
from buscad.data.importers import busi  # noqa: E402, F401
from buscad.data.importers import breast  # noqa: E402, F401
from buscad.data.importers import folders  # noqa: E402, F401
from buscad.data.importers import tables  # noqa: E402, F401
from buscad.data.importers import dicom  # noqa: E402, F401
# isort: on
