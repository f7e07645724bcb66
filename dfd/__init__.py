"""dfd: the command line (``dfd.cli``), the Prefect flows (``dfd.flows``), the Ray tasks (``dfd.tasks``) and the
deployment files (``dfd.infra``) over the library ``dfdcore``.

In the repository flows/, tasks/ and infra/ sit beside this folder and are installed into it (pyproject's
package-dir). Code run from a plain checkout without installing it — e.g. Ray's ``working_dir`` upload shadowing an
installed dfd — finds them there too."""
from pathlib import Path as _Path

_checkout = _Path(__file__).resolve().parent.parent
if (_checkout / "pyproject.toml").is_file() and (_checkout / "flows" / "__init__.py").is_file():
    __path__.append(str(_checkout))
