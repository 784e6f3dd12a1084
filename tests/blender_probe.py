"""Imports sathmr's animation files into Blender (``bpy``, headless) and reports what Blender made of them.

Run by tests/test_anim.py in the Python that has ``bpy`` (its own virtual environment: bpy pins
numpy < 2, sathmr needs numpy >= 2), so it uses bpy and the standard library only, never sathmr:

    python blender_probe.py '{"glb": "...", "bvh": ["..."], "fps": 10, "frames": [0, 4, 9], "out": "...json"}'

Blender's glTF importer puts time t at frame t * fps (the scene fps is set to the file's first), so a
video frame keeps its index; a BVH is imported to start at its track's first frame + 1 (Blender's BVH
importer starts at frame 1 or later), and read one frame later. The JSON
written to ``out`` holds, for the glTF: each armature's bones and keys per channel, and the evaluated
(skinned, world-space) vertices of each mesh at ``frames``; for each BVH: per bone the armature-space
rotation of its pose relative to its rest (3x3) at ``frames`` (``bvh_start``: each file's first frame). Coordinates are
Blender's (z up); the test converts.
"""

import json
import sys

import bpy


def channelbag_fcurves(obj):
    """The F-curves animating ``obj`` (layered actions since Blender 4.4; plain ``action.fcurves`` before)."""
    ad = obj.animation_data
    if ad is None or ad.action is None:
        return []
    slot = getattr(ad, "action_slot", None)
    if slot is not None:
        from bpy_extras import anim_utils

        bag = anim_utils.action_get_channelbag_for_slot(ad.action, slot)
        return list(bag.fcurves) if bag is not None else []
    return list(ad.action.fcurves)


def reset(fps):
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.render.fps, scene.render.fps_base = int(round(fps)), 1.0
    return scene


def probe_glb(path, fps, frames):
    scene = reset(fps)
    bpy.ops.import_scene.gltf(filepath=path)
    out = {"armatures": {}, "meshes": {}, "objects": {o.name: o.type for o in scene.objects}}
    for obj in scene.objects:
        if obj.type == "ARMATURE":
            keys = {}
            for fc in channelbag_fcurves(obj):
                keys.setdefault(fc.data_path, []).append([kp.co[0] for kp in fc.keyframe_points])
            out["armatures"][obj.name] = {"bones": [b.name for b in obj.data.bones], "keys": keys,
                                          "parent": obj.parent.name if obj.parent else None}
    for f in frames:
        scene.frame_set(f)
        dg = bpy.context.evaluated_depsgraph_get()
        for obj in scene.objects:
            if obj.type != "MESH" or obj.parent is None:   # the importer's bone-shape spheres have no parent
                continue
            ev = obj.evaluated_get(dg)
            me = ev.to_mesh()
            mw = ev.matrix_world
            out["meshes"].setdefault(obj.name, {})[str(f)] = [list(mw @ v.co) for v in me.vertices]
            ev.to_mesh_clear()
    return out


def probe_bvh(path, fps, start, frames):
    scene = reset(fps)
    # the importer starts at frame 1 at least, so every BVH goes one frame later: video frame f at f + 1
    bpy.ops.import_anim.bvh(filepath=path, global_scale=1.0, frame_start=start + 1, use_fps_scale=False,
                            update_scene_fps=False, update_scene_duration=True, rotate_mode="NATIVE")
    arm = next(o for o in scene.objects if o.type == "ARMATURE")
    out = {"bones": [b.name for b in arm.data.bones], "rotations": {}}
    for f in frames:
        scene.frame_set(f + 1)
        rots = {}
        for pb in arm.pose.bones:
            delta = (arm.matrix_world @ pb.matrix) @ (arm.matrix_world @ pb.bone.matrix_local).inverted()
            rots[pb.name] = [list(r) for r in delta.to_3x3()]
        out["rotations"][str(f)] = rots
    return out


def main():
    args = json.loads(sys.argv[1])
    report = {"version": bpy.app.version_string}
    if args.get("glb"):
        report["glb"] = probe_glb(args["glb"], args["fps"], args["frames"])
    report["bvh"] = [probe_bvh(p, args["fps"], start, args["frames"])
                     for p, start in zip(args.get("bvh", []), args.get("bvh_start", []))]
    with open(args["out"], "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main()
