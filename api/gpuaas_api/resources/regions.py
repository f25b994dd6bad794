from __future__ import annotations

from flask.views import MethodView
from flask_smorest import Blueprint
from sqlalchemy import delete, select, update

from ..access import changes, reads
from ..db import commit_unique, session
from ..domain_errors import Refused, not_found
from ..models import Cluster, Gpu, Node, Pool, Region
from ..rendering import render_regions
from ..schemas import RegionCreateSchema, RegionSchema, RegionUpdateSchema
from ..states import ClusterStatus, GpuAssignment
from ..reply_cache import json_reply

blp = Blueprint("regions", __name__, description="Regions")


def get_region(region_id: int) -> Region:
    region = session().get(Region, region_id)
    if region is None:
        raise not_found("region", region_id)
    return region


def region_reply(region: Region, status: int = 200):
    return json_reply(render_regions(session(), [region])[0], status)


def _commit_unique_name(region: Region) -> None:
    commit_unique("region_name", f"a region named {region.region_name} exists already")


def _all_regions():
    db = session()
    return json_reply(render_regions(db, db.scalars(select(Region).order_by(Region.id)).all()))


@blp.route("/regions")
class Regions(MethodView):
    @blp.response(200, RegionSchema(many=True))
    @reads
    def get(self):
        """All regions, as a bare array."""
        return _all_regions()

    @blp.arguments(RegionCreateSchema)
    @blp.response(201, RegionSchema)
    @changes
    def post(self, fields):
        """Create a region."""
        region = Region(**fields)
        session().add(region)
        _commit_unique_name(region)
        return region_reply(region, 201)


@blp.route("/gpuaas/list/regions")
class RegionList(MethodView):
    @blp.response(200, RegionSchema(many=True))
    @reads
    def get(self):
        """The guide's name for the region list."""
        return _all_regions()


def remove_torn_down_clusters(db, cluster_ids: list[int]) -> None:
    """Delete torn-down clusters with their pools (flushed, not committed). Their GPUs, on nodes that
    have left, go back to no pool."""
    if not cluster_ids:
        return
    pool_ids = select(Pool.id).where(Pool.cluster_id.in_(cluster_ids))
    db.execute(update(Gpu).where(Gpu.pool_id.in_(pool_ids))
               .values(pool_id=None, assignment_status=GpuAssignment.UNASSIGNED))
    db.execute(delete(Pool).where(Pool.cluster_id.in_(cluster_ids)))
    db.execute(delete(Cluster).where(Cluster.id.in_(cluster_ids)))


@blp.route("/regions/<id:region_id>")
class RegionById(MethodView):
    @blp.response(200, RegionSchema)
    @reads
    def get(self, region_id):
        return region_reply(get_region(region_id))

    @blp.arguments(RegionUpdateSchema(partial=True), required=False)
    @blp.response(200, RegionSchema)
    @changes
    def put(self, fields, region_id):
        region = get_region(region_id)
        for key, value in fields.items():
            setattr(region, key, value)
        _commit_unique_name(region)
        return region_reply(region)

    @blp.response(204)
    @changes
    def delete(self, region_id):
        """Delete a region that holds no node and no live cluster; its torn-down clusters go with it."""
        region = get_region(region_id)
        db = session()
        if db.scalar(select(Node.id).where(Node.region_id == region_id).limit(1)) is not None:
            raise Refused(f"region {region_id} still holds nodes; delete them first")
        live = db.scalar(select(Cluster.id).where(Cluster.region_id == region_id,
                                                  Cluster.status != ClusterStatus.INACTIVE).limit(1))
        if live is not None:
            raise Refused(f"region {region_id} still holds GPUaaS cluster {live}; tear it down first")
        remove_torn_down_clusters(db, db.scalars(select(Cluster.id).where(Cluster.region_id == region_id)).all())
        db.delete(region)
        db.commit()
