"""pgplatform: one stack of the PostgreSQL + PostgREST data platform."""

import pulumi

from components.platform import build_platform, export_outputs
from components.settings import SettingsError, load_settings

try:
    settings = load_settings()
except SettingsError as error:
    # RunError is reported by the engine as a plain message, without a Python traceback.
    raise pulumi.RunError(str(error)) from None

export_outputs(build_platform(settings))
