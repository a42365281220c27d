"""Request and response models of the HTTP API (v1).

``JobCreate`` validates a submission once, at the edge: strict types (a
string is not a number, a number is not a boolean), bounds, no unknown
fields. ``JobPublic`` is the job as every route returns it.
"""

from __future__ import annotations

import re

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field,
                      ValidationInfo, field_validator, model_validator)

from svdserve.worker import Method

from ._states import JobState

__all__ = ["SourceSpec", "JobCreate", "ProgressPublic", "JobErrorPublic", "JobResult",
           "JobLinks",
           "JobPublic", "JobList", "Problem", "FieldError", "Health", "Ready",
           "JobState", "ErrorType"]

ErrorType = Literal["invalid_input", "non_finite_values", "storage_error", "worker_lost",
                    "cancelled", "internal"]


def _encodable(value: str) -> str:
    """Refuse strings that cannot be UTF-8 encoded (lone surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("must be valid Unicode text (no lone surrogates)") from exc
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


Text = Annotated[str, AfterValidator(_encodable)]

#: Text without control characters, with at least one character that is not
#: a space (what a path or an array name can honestly hold).
PATH_PATTERN = r"^[^\x00-\x1f\x7f]*[^\x00-\x20\x7f][^\x00-\x1f\x7f]*$"


def _json_int(value: Any) -> Any:
    """JSON integers: 5 and 5.0 are integers; "5" and true are not."""
    if isinstance(value, bool) or isinstance(value, str):
        raise ValueError("Input should be a valid integer (a JSON number, not a string or "
                         "boolean)")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


JsonInt = Annotated[int, BeforeValidator(_json_int)]


class SourceSpec(BaseModel):
    """Where the matrix is: a Zarr array, or a group plus the array's path in it."""

    model_config = ConfigDict(extra="forbid")

    url: Text = Field(
        min_length=1, max_length=4096, pattern=PATH_PATTERN,
        description="Absolute path or file:// URL inside a data root, a path relative to the "
                    "first data root, or s3://bucket/key inside a configured bucket prefix.",
        examples=["matrices/A.zarr"])
    array: Text | list[Text] | None = Field(
        default=None,
        description="Path of the array inside the group at `url` (null when `url` is an array "
                    "or a group holding exactly one array), or a list of them: several "
                    "variables sharing the sample dimensions, decomposed together "
                    "(multivariate EOF; the report's `variables` gives each one's columns).")

    @field_validator("array", mode="before")
    @classmethod
    def _array_paths(cls, value):
        """One path, or 1 to 64 distinct paths, each 1-1024 characters without controls."""
        if value is None:
            return value
        items = value if isinstance(value, list) else [value]
        if isinstance(value, list) and not 1 <= len(value) <= 64:
            raise ValueError(f"give 1 to 64 array paths; got {len(value)}")
        for item in items:
            if not isinstance(item, str) or not 1 <= len(item) <= 1024 \
                    or not re.match(PATH_PATTERN, item):
                raise ValueError(f"an array path is 1 to 1024 characters without control "
                                 f"characters; got {item!r:.80}")
        if len(set(items)) != len(items):
            raise ValueError(f"the array paths must be distinct; got {value!r:.200}")
        return value
    sample_dims: list[Annotated[Text, Field(min_length=1, max_length=256)]] | None = Field(
        default=None, min_length=1, max_length=32,
        description="Read an N-D variable (e.g. (time, lat, lon) of an xarray-written store) as "
                    "the matrix whose rows are these dimensions (the samples) and whose "
                    "columns are the other dimensions flattened in C order (the features): "
                    "EOF analysis with [\"time\"]. Required when the array is not 2-D; a "
                    "2-D array with dimension names (xarray-written) defaults to its first "
                    "dimension, and a note on the job says so.",
        examples=[["time"]])


class JobCreate(BaseModel):
    """A truncated SVD job.

    ``n_oversamples`` is clipped to ``min(m, n) - rank`` when the sum would
    exceed the matrix's smaller dimension (a note on the job says so);
    ``rank > min(m, n)`` is refused with 422.
    """

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"source": {"url": "matrices/A.zarr", "array": None}, "rank": 20, "method": "auto",
         "n_oversamples": 10, "n_iter": 2, "center": False, "random_state": 0}]})

    source: SourceSpec
    rank: JsonInt | None = Field(default=None, strict=True, ge=1, le=100_000,
                             description="Number of singular triplets to compute (k >= 1); "
                                         "exactly one of `rank` and `energy`.")
    energy: float | None = Field(
        default=None, strict=True, gt=0, lt=1,
        description="Instead of `rank`: the smallest rank capturing this fraction of ‖A‖²_F "
                    "(of the total variance when centred), as PCA(n_components=energy).")
    max_rank: JsonInt | None = Field(default=None, strict=True, ge=1, le=100_000,
                                 description="With `energy`: the largest rank returned.")
    method: Method = Field(
        default="auto",
        description="`exact` (TSQR: every singular value), `randomized` (Halko et al.; "
                    "with `energy` the blocked QB of Yu, Gu & Li), `sketch` (one pass, "
                    "Tropp et al. 2019), or `auto` (exact for narrow matrices, randomized "
                    "otherwise).")
    n_oversamples: JsonInt = Field(default=10, strict=True, ge=0, le=10_000,
                               description="Extra sketch columns p (randomized).")
    n_iter: JsonInt = Field(default=2, strict=True, ge=0, le=50,
                        description="Power iterations q (randomized); q + 1 passes over A.")
    center: bool = Field(default=False, strict=True,
                         description="Subtract column means first (PCA), implicitly.")
    compute_u: bool = Field(default=True, strict=True,
                            description="Form the left factor U; false gives σ and V only "
                                        "(one pass over A for the exact method).")
    random_state: JsonInt = Field(default=0, strict=True, ge=0, le=2**32 - 1,
                              description="Seed of the random test matrix.")
    missing: Literal["error", "mask"] = Field(
        default="error",
        description="`error`: NaN/Inf fail the job (`non_finite_values`). `mask`: features "
                    "missing (NaN or the CF _FillValue) in every sample, such as land in an "
                    "ocean field, are masked and recorded in the result; features missing in "
                    "only some samples fail the job, naming them.")
    weights: str | list | None = Field(
        default=None,
        description="Feature weights, applied inside the passes (EOF analysis of the "
                    "weighted field, as eofs/xeofs): `coslat` (√cos latitude, from the "
                    "`lat`/`latitude` coordinate of an N-D source), `area` (√ normalised cell "
                    "area), or non-negative numbers, one per feature (a list, or nested lists "
                    "in the shape of the feature dimensions).")
    standardize: bool = Field(
        default=False, strict=True,
        description="Divide each feature by its standard deviation (measured in pass 1, no "
                    "extra pass; constant features become 0 as in xeofs): correlation-matrix "
                    "EOFs. Needs `center: true`.")
    missing_chunks: Literal["fill", "error"] = Field(
        default="fill",
        description="A chunk that the metadata implies but the store lacks is the fill value "
                    "in Zarr (zarr-python does not write chunks equal to it). `fill` reads it "
                    "so; the plan (`absent_chunks`, `fill_value`), a note and the report's "
                    "`input` give the count. `error` (strict: catch half-finished uploads) "
                    "fails the job with `invalid_input`, naming the chunk and its row range. "
                    "A chunk that vanishes or appears while the job runs is a "
                    "`storage_error` either way.")
    allow_missing_chunks: bool | None = Field(
        default=None, strict=True, json_schema_extra={"deprecated": True},
        description="Deprecated (a note on the job says so): `true` is "
                    "`missing_chunks: \"fill\"`, `false` is `missing_chunks: \"error\"`.")

    @field_validator("allow_missing_chunks")
    @classmethod
    def _no_contradiction(cls, value: bool | None, info: ValidationInfo) -> bool | None:
        if value and info.data.get("missing_chunks") == "error":
            raise ValueError("allow_missing_chunks (deprecated) = true contradicts "
                             "missing_chunks = \"error\"; give missing_chunks alone")
        return value

    @model_validator(mode="after")
    def _map_deprecated(self) -> JobCreate:
        """The deprecated ``allow_missing_chunks`` decides ``missing_chunks`` when given."""
        if self.allow_missing_chunks is not None:
            self.missing_chunks = "fill" if self.allow_missing_chunks else "error"
        return self


class Plan(BaseModel):
    """How the matrix is cut into panels, decided from its metadata at submit."""

    kind: str = Field(description="chunks (whole chunk bands), slices (raw chunks read by "
                                  "byte range) or rechunk (a one-time raw copy first)")
    panel_shape: list[int] = Field(description="Rows and columns of one panel (tall view).")
    panels: int = Field(description="Number of panels.")
    tall_chunks: list[int] = Field(description="Chunk shape in the tall view's orientation.")
    unit_bytes: int = Field(description="What a task must hold whatever the panel budget.")
    peak_bytes_per_worker: int = Field(description="Estimated peak per worker, excluding the "
                                                   "panel cache.")
    reason: str
    n_chunks: int | None = Field(default=None, description="Chunk keys the metadata implies.")
    absent_chunks: int | None = Field(
        default=None, description="Of them, absent from the store: read as `fill_value` "
                                  "(`missing_chunks: \"fill\"`).")
    fill_value: float | str | None = Field(
        default=None, description="What an absent chunk reads as (\"NaN\" and "
                                  "\"Infinity\" as strings).")


class ProgressPublic(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    phase: str = Field(description="rechunk, stats+qr, power, range+project, tall, sketch, "
                                   "factor or write")
    pass_: int = Field(alias="pass", description="Pass over A this step belongs to.")
    passes: int = Field(description="Passes over A the job makes.")
    done: int = Field(description="Panels finished in this step.")
    total: int = Field(description="Panels in this step.")
    plan: Plan | None = Field(default=None, description="How the matrix is cut.")


class JobErrorPublic(BaseModel):
    type: ErrorType
    message: str


class JobResult(BaseModel):
    url: str = Field(description="Storage URL of result.zarr (for readers sharing storage).")
    http: str = Field(description="The result group served read-only over HTTP.")
    shape: list[int]
    rank: int = Field(description="Components computed (chosen by the job when it gave `energy`).")
    method: str


class JobLinks(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    self_: str = Field(alias="self")
    report: str
    result: str
    cancel: str


class JobPublic(BaseModel):
    """A job as the API shows it."""

    id: str
    state: JobState
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime
    attempt: int
    request: JobCreate
    method: str | None = Field(default=None, description="The method that runs: `auto` "
                               "resolved to `exact` or `randomized` (`randqb` for an energy "
                               "target with randomized), from the matrix's shape at submit.")
    plan: Plan | None = Field(default=None, description="How the matrix is cut (at submit).")
    shape: list[int] | None = Field(default=None, description="Shape (m, n) of the matrix "
                                    "decomposed, known from submit.")
    progress: ProgressPublic | None = None
    error: JobErrorPublic | None = None
    notes: list[str] = Field(default_factory=list)
    result: JobResult | None = None
    links: JobLinks


class JobList(BaseModel):
    items: list[JobPublic]
    next_cursor: str | None = Field(
        default=None, description="Pass as `cursor` to get the next (older) page.")


class FieldError(BaseModel):
    field: str = Field(description="Dotted path of the offending input, e.g. `body.rank`.")
    message: str = Field(description="What was expected.")


class Problem(BaseModel):
    """RFC 9457 problem details."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(examples=["https://svdserve.dev/problems/validation-error"])
    title: str
    status: int
    detail: str
    instance: str
    request_id: str
    errors: list[FieldError] | None = None


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Ready(BaseModel):
    ready: bool
    workers: int = Field(description="Dask workers connected to the scheduler.")

