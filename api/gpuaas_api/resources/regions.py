from __future__ import annotations

from flask.views import MethodView
from flask_smorest import Blueprint
from sqlalchemy import select

from ..db import commit_unique, session
from ..errors import conflict, not_found
from ..models import Cluster, Node, Region
from ..schemas import RegionSchema, RegionUpdateSchema

blp = Blueprint("regions", __name__, description="Regions")


def get_region(region_id: int) -> Region:
    region = session().get(Region, region_id)
    if region is None:
        raise not_found("region", region_id)
    return region


def _commit_unique_name(region: Region) -> None:
    commit_unique("region_name", f"a region named {region.region_name} exists already")


@blp.route("/regions")
class Regions(MethodView):
    @blp.response(200, RegionSchema(many=True))
    def get(self):
        """All regions, as a bare array."""
        return session().scalars(select(Region).order_by(Region.id)).all()

    @blp.arguments(RegionSchema)
    @blp.response(201, RegionSchema)
    def post(self, fields):
        """Create a region."""
        region = Region(**fields)
        session().add(region)
        _commit_unique_name(region)
        return region


@blp.route("/gpuaas/list/regions")
class RegionList(MethodView):
    @blp.response(200, RegionSchema(many=True))
    def get(self):
        """The guide's name for the region list."""
        return session().scalars(select(Region).order_by(Region.id)).all()


@blp.route("/regions/<int:region_id>")
class RegionById(MethodView):
    @blp.response(200, RegionSchema)
    def get(self, region_id):
        return get_region(region_id)

    @blp.arguments(RegionUpdateSchema(partial=True))
    @blp.response(200, RegionSchema)
    def put(self, fields, region_id):
        region = get_region(region_id)
        for key, value in fields.items():
            setattr(region, key, value)
        _commit_unique_name(region)
        return region

    @blp.response(204)
    def delete(self, region_id):
        """Delete a region that holds no node and no cluster."""
        region = get_region(region_id)
        db = session()
        if db.scalar(select(Node.id).where(Node.region_id == region_id).limit(1)) is not None:
            raise conflict(f"region {region_id} still holds nodes; delete them first")
        if db.scalar(select(Cluster.id).where(Cluster.region_id == region_id).limit(1)) is not None:
            raise conflict(f"region {region_id} still holds a GPUaaS cluster; tear it down first")
        db.delete(region)
        db.commit()
