"""The cluster's spec: `GET /v1/spec` reads it, `PUT /v1/spec` changes it."""

from ninefold import operations
from ninefold.api.context import Context
from ninefold.api.models import SpecChangeOut, SpecIn, SpecOut
from ninefold.api.routing import ResourceRouter
from ninefold.spec import dump_spec
from ninefold.state.keys import SPEC_KEY

router = ResourceRouter()


@router.operation("GET", "/v1/spec", role="read", tag="reading", model=SpecOut, errors=[503])
async def get_spec(ctx: Context) -> SpecOut:
    item = await ctx.store.get(SPEC_KEY)
    if item is None:
        return SpecOut(yaml=dump_spec(ctx.spec), revision=0)
    return SpecOut(yaml=item.value.decode(errors="replace"), revision=item.mod_revision)


@router.operation(
    "PUT",
    "/v1/spec",
    role="admin",
    tag="changing",
    model=SpecChangeOut,
    errors=[409, 422, 503],
)
async def put_spec(ctx: Context, body: SpecIn, dry_run: bool = False) -> SpecChangeOut:
    """Validate a spec and, unless dry_run, make it the desired state."""
    change = await operations.apply_spec(ctx.store, body.yaml, dry_run)
    return SpecChangeOut(diff=change.diff, applied=change.applied, revision=change.revision)
