"""Render one frame of an animated glTF as Blender imports it (bpy only; run in the Blender venv).

    python blender_render.py clip_anim.glb out.png FRAME

Writes OUT_cam.png (through the file's camera: the video's view) and OUT_side.png (the same frame
from the side). Cycles on the CPU (headless bpy has no OpenGL for Workbench/Eevee), few samples.
"""

import json
import math
import struct
import sys

import bpy
from mathutils import Vector


def render(path_png, camera, w, h):
    scene = bpy.context.scene
    scene.camera = camera
    scene.render.resolution_x, scene.render.resolution_y = w, h
    scene.render.filepath = path_png
    bpy.ops.render.render(write_still=True)


def glb_aspect(path):
    """The glTF camera's aspect ratio, read from the GLB's JSON chunk."""
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<I", data[12:16])[0]
    return json.loads(data[20:20 + n])["cameras"][0]["perspective"]["aspectRatio"]


def main():
    glb, png, frame = sys.argv[1], sys.argv[2], int(sys.argv[3])
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.render.fps = 10
    bpy.ops.import_scene.gltf(filepath=glb)
    scene.frame_set(frame)
    scene.render.engine = "CYCLES"
    scene.cycles.device, scene.cycles.samples = "CPU", 24
    scene.render.film_transparent = False
    world = bpy.data.worlds.new("world")
    world.color = (0.8, 0.8, 0.8)
    scene.world = world
    world.use_nodes = True
    world.node_tree.nodes["Background"].inputs[0].default_value = (0.85, 0.85, 0.88, 1)
    world.node_tree.nodes["Background"].inputs[1].default_value = 0.7
    sun = bpy.data.objects.new("sun", bpy.data.lights.new("sun", "SUN"))
    sun.data.energy = 3.0
    sun.rotation_euler = (math.radians(40), math.radians(10), math.radians(30))
    scene.collection.objects.link(sun)
    for obj in scene.objects:
        if obj.type == "MESH" and obj.parent is None:
            obj.hide_render = True               # the importer's bone-shape spheres
    cam = next(o for o in scene.objects if o.type == "CAMERA")
    w, h = 320, round(320 / glb_aspect(glb))
    render(png.replace(".png", "_cam.png"), cam, w, h)
    # a side view: the people's bounding box from the right and a little in front
    bodies = [o for o in scene.objects if o.type == "MESH" and o.parent is not None]
    dg = bpy.context.evaluated_depsgraph_get()
    per_body = [[o.evaluated_get(dg).matrix_world @ v.co for v in o.evaluated_get(dg).to_mesh().vertices] for o in bodies]
    pts = [p for body in per_body if (body[0] - body[-1]).length > 1e-6 for p in body]   # hidden ones are points
    lo = Vector([min(p[k] for p in pts) for k in range(3)])
    hi = Vector([max(p[k] for p in pts) for k in range(3)])
    centre, extent = (lo + hi) / 2, max(hi - lo)
    side = bpy.data.objects.new("side", bpy.data.cameras.new("side"))
    scene.collection.objects.link(side)
    side.location = centre + extent * Vector((1.6, -0.9, 0.25))
    side.rotation_euler = (centre - side.location).to_track_quat("-Z", "Y").to_euler()
    render(png.replace(".png", "_side.png"), side, w, h)


if __name__ == "__main__":
    main()
