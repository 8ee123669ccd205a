"""Rendering, the interactive viewer and recording, all under SDL's dummy (headless) video driver.

Views are synthetic: a small tile map and a few agents, so what each pixel should be is known.
"""

from __future__ import annotations

import dataclasses
import os

os.environ["SDL_VIDEODRIVER"] = "dummy"
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

import imageio.v3 as iio  # noqa: E402
import numpy as np  # noqa: E402
import pygame  # noqa: E402
import pytest  # noqa: E402

import worlds.render.renderer as renderer_module  # noqa: E402
from worlds.render import (  # noqa: E402
    ZOOM_LEVELS,
    Camera,
    Recorder,
    RecordingError,
    Renderer,
    Viewer,
    role_color,
    snapshot,
    surface_to_array,
    tile_color,
)
from worlds.render.inspector import panel_rect  # noqa: E402
from worlds.render.palette import luminance  # noqa: E402
from worlds.render.renderer import BUBBLE_COLOR, format_stat  # noqa: E402
from worlds.render.text import font, wrap  # noqa: E402
from worlds.render.viewer import PAN_STEP  # noqa: E402
from worlds.view import AgentView, WorldView  # noqa: E402

KINDS = {0: "grass", 1: "field", 2: "river", 3: "home", 4: "swamp"}
SIZE = (640, 480)


def make_view(tick: int = 1, night: bool = False, **moves: tuple[int, int]) -> WorldView:
    """A 12x10 map: grass, a river column, a field block, a home, one tile of an unknown kind."""
    tiles = np.zeros((10, 12), dtype=np.int64)
    tiles[:, 9] = 2
    tiles[6:9, 1:4] = 1
    tiles[1, 1] = 3
    tiles[0, 11] = 4
    agents = [
        AgentView("Ada", "farmer", 2, 7, needs={"hunger": 0.2, "energy": 0.9}, coins=5),
        AgentView("Bram", "merchant", 6, 4, utterance="Three logs for a fish, anyone? Fair price!"),
        AgentView("Cora", "woodcutter", 5, 1, refused="too far to trade"),
        AgentView("Dax", "bard", 10, 8),
    ]
    agents = [
        dataclasses.replace(a, x=moves[a.name][0], y=moves[a.name][1]) if a.name in moves else a
        for a in agents
    ]
    return WorldView(
        tick=tick, tiles=tiles, tile_kinds=KINDS, agents=tuple(agents), is_night=night, score=0.61
    )


def pixel(surface: pygame.Surface, xy: tuple[int, int]) -> tuple[int, int, int]:
    return tuple(surface.get_at((int(xy[0]), int(xy[1]))))[:3]


def near(a: tuple[int, ...], b: tuple[int, ...], tol: int = 10) -> bool:
    return all(abs(int(x) - int(y)) <= tol for x, y in zip(a, b, strict=True))


def body_point(p: renderer_module.Placed) -> tuple[int, int]:
    """A point inside an agent's marker, above the initial letter drawn at its centre."""
    return p.cx, p.cy - int(0.7 * p.r)


def placed(r: Renderer, view: WorldView, name: str) -> renderer_module.Placed:
    return next(p for p in r.layout(view) if p.agent.name == name)


@pytest.fixture(autouse=True)
def _fonts():
    pygame.font.init()
    yield


def fixed_renderer() -> Renderer:
    r = Renderer(tile_size=32)
    r.camera.offset_x, r.camera.offset_y = 20, 40
    return r


# ----------------------------------------------------------------------------- renderer


def test_agents_drawn_in_role_colour_where_they_stand_on_tile_colour_ground():
    r, view = fixed_renderer(), make_view()
    surf = r.render(view, SIZE)
    for a in view.agents:
        p = placed(r, view, a.name)
        assert (p.cx, p.cy) == r.camera.tile_center(a.x, a.y)
        assert near(pixel(surf, body_point(p)), role_color(a.role)), a.name
    # Tiles without agents show their kind's colour at the tile corner (motifs keep clear of it).
    for (tx, ty), kind in [((0, 0), "grass"), ((9, 8), "river"), ((2, 8), "field"), ((11, 0), "swamp")]:
        corner = r.camera.tile_to_screen(tx, ty)
        assert near(pixel(surf, (corner[0] + 1, corner[1] + 1)), tile_color(kind)), kind

    moved = make_view(Ada=(1, 4))
    surf2 = r.render(moved, SIZE)
    old = body_point(placed(r, view, "Ada"))
    assert near(pixel(surf2, old), tile_color("field"))  # Ada's old spot is bare field again
    assert near(pixel(surf2, body_point(placed(r, moved, "Ada"))), role_color("farmer"))


def test_unknown_roles_and_kinds_get_stable_distinct_colours():
    # Pinned values: a salted hash() would change these from one process to the next.
    assert role_color("bard") == role_color("bard") == (242, 121, 84)
    assert role_color("bard") not in {role_color(k) for k in ("farmer", "merchant", "fisher", "villager")}
    assert tile_color("swamp") != tile_color("bog")
    assert tile_color("grass", night=True) != tile_color("grass")


def test_agents_sharing_a_tile_are_all_visible_and_clickable():
    r = fixed_renderer()
    view = make_view(Ada=(6, 4), Cora=(6, 4))  # three agents on Bram's tile
    layout = [p for p in r.layout(view) if (p.agent.x, p.agent.y) == (6, 4)]
    assert len({(p.cx, p.cy) for p in layout}) == 3
    r.render(view, SIZE)
    for p in layout:
        assert r.agent_at(view, (p.cx, p.cy)).name == p.agent.name


def test_camera_pan_and_zoom_keep_pixel_and_tile_mapping_consistent():
    cam = Camera(offset_x=13, offset_y=-7, tile_size=20)
    for tx, ty in [(0, 0), (3, 5), (11, 9)]:
        assert cam.screen_to_tile(*cam.tile_center(tx, ty)) == (tx, ty)
        px, py = cam.tile_to_screen(tx, ty)
        assert cam.screen_to_tile(px, py) == (tx, ty)
        assert cam.screen_to_tile(px - 1, py - 1) == (tx - 1, ty - 1)
    anchor = (300, 200)
    before = cam.screen_to_tile(*anchor)
    cam.zoom(2, anchor)
    assert cam.tile_size == 32 and cam.screen_to_tile(*anchor) == before
    cam.zoom(-99, anchor)
    assert cam.tile_size == ZOOM_LEVELS[0] and cam.screen_to_tile(*anchor) == before

    r, view = fixed_renderer(), make_view()
    r.render(view, SIZE)
    ada = placed(r, view, "Ada")
    assert r.agent_at(view, (ada.cx, ada.cy)).name == "Ada"
    assert r.tile_at(view, (ada.cx, ada.cy)) == (2, 7)
    r.camera.pan(64, -32)
    surf = r.render(view, SIZE)
    assert r.tile_at(view, (ada.cx + 64, ada.cy - 32)) == (2, 7)
    assert r.agent_at(view, (ada.cx + 64, ada.cy - 32)).name == "Ada"
    assert r.agent_at(view, (ada.cx, ada.cy)) is None
    assert near(pixel(surf, (ada.cx + 64, ada.cy - 32 - int(0.7 * ada.r))), role_color("farmer"))
    assert r.tile_at(view, (5, 5)) is None  # on the HUD
    assert r.tile_at(view, (SIZE[0] - 1, SIZE[1] - 1)) is None  # off the map


def test_speech_bubble_drawn_near_speaker_and_never_over_the_hud():
    r, view = fixed_renderer(), make_view()
    surf = r.render(view, SIZE)
    bram = placed(r, view, "Bram")
    box = r.bubbles["Bram"]
    assert 0 <= (bram.cy - bram.r) - box.bottom <= 8  # just above the speaker
    assert box.left <= bram.cx <= box.right
    assert near(pixel(surf, (box.x + 3, box.centery)), BUBBLE_COLOR, tol=4)
    assert set(r.bubbles) == {"Bram"}

    # A map area cut short just right of the speaker (the viewer's inspector panel): the bubble
    # moves left to stay inside it.
    area = pygame.Rect(0, 0, bram.cx + 30, SIZE[1])
    r.draw(surf, view, map_area=area)
    assert r.bubbles["Bram"].right <= area.right and r.bubbles["Bram"].left <= bram.cx

    # A speaker right under the HUD: the bubble goes below rather than over the HUD.
    r.camera.offset_y = r.hud_height - 4 * r.camera.tile_size
    surf = r.render(view, SIZE)
    assert r.bubbles["Bram"].top >= r.hud_height
    assert not r.bubbles["Bram"].collidepoint(*(lambda p: (p.cx, p.cy))(placed(r, view, "Bram")))


def test_crowded_speakers_fall_back_to_badges_instead_of_overlapping():
    r = fixed_renderer()
    crowd = tuple(
        AgentView(f"A{i}", "villager", 3 + i % 2, 4, utterance="a rather long sentence " * 3)
        for i in range(6)
    )
    view = dataclasses.replace(make_view(), agents=crowd)
    r.render(view, SIZE)
    rects = list(r.bubbles.values())
    assert 1 <= len(rects) < 6
    assert all(not a.colliderect(b) for i, a in enumerate(rects) for b in rects[i + 1 :])


def test_night_is_darker_than_day():
    r = fixed_renderer()
    day = surface_to_array(r.render(make_view(), SIZE))
    night = surface_to_array(r.render(make_view(night=True), SIZE))
    vp = r.viewport(SIZE)
    region = (slice(vp.top, vp.bottom), slice(vp.left, vp.right))
    assert night[region].mean() < 0.7 * day[region].mean()


def test_hud_shows_stats_and_tile_layer_is_cached(monkeypatch):
    calls = []
    real = renderer_module.paint_tiles
    monkeypatch.setattr(renderer_module, "paint_tiles", lambda *a: calls.append(a[2:]) or real(*a))
    r, view = fixed_renderer(), make_view()
    plain = surface_to_array(r.render(view, SIZE))
    with_stats = surface_to_array(r.render(make_view(tick=1), SIZE, {"decisions/s": 312.5}))
    hud = slice(0, r.hud_height)
    assert not np.array_equal(plain[hud], with_stats[hud])
    assert np.array_equal(plain[r.hud_height :], with_stats[r.hud_height :])
    assert len(calls) == 1  # same tiles, same zoom: painted once
    r.render(make_view(tick=2, Ada=(0, 0)), SIZE)
    assert len(calls) == 1  # agents moving does not repaint the map
    r.camera.zoom(1, (100, 100))
    r.render(view, SIZE)
    changed = dataclasses.replace(view, tiles=np.where(view.tiles == 2, 0, view.tiles))
    r.render(changed, SIZE)
    assert calls == [(32, False), (40, False), (40, False)]


def test_format_stat_and_wrap():
    assert format_stat(1234567) == "1,234,567"
    assert format_stat(312.46) == "312"
    assert format_stat(0.8731) == "0.87"
    assert format_stat("max") == "max"
    f = font(16)
    lines = wrap("the quick brown fox jumps over the lazy dog " * 4 + "Supercalifragilistic" * 3, f, 120)
    assert all(f.size(line)[0] <= 120 for line in lines) and len(lines) > 4
    short = wrap("the quick brown fox jumps over the lazy dog " * 4, f, 120, max_lines=2)
    assert len(short) == 2 and short[-1].endswith("…")


# ----------------------------------------------------------------------------- viewer


def persona_sheet(name: str) -> dict[str, str]:
    return {
        "persona": f"{name}, a thrifty trader who never sells below cost.",
        "memory": "t0 bought wheat\nt1 talked to Ada",
        "last prompt": "[rules]… [role] merchant [obs] hunger 0.4",
        "last decision": '{"action": "talk", "to": "Ada"}',
    }


@pytest.fixture
def viewer():
    with Viewer(persona_sheet, size=SIZE, fps=1000) as v:
        yield v


def post(kind: int, **attrs: object) -> None:
    pygame.event.post(pygame.event.Event(kind, **attrs))


def test_click_on_agent_opens_inspector_with_callback_text(viewer):
    view = make_view()
    viewer.draw(view)
    area = panel_rect(SIZE, viewer.renderer.hud_height)
    before = surface_to_array(viewer.screen)[area.top : area.bottom, area.left : area.right].copy()
    bram = placed(viewer.renderer, view, "Bram")
    post(pygame.MOUSEBUTTONDOWN, button=1, pos=(bram.cx, bram.cy))
    assert viewer.handle_events()
    assert viewer.selected == "Bram" and viewer.inspector == persona_sheet("Bram")
    viewer.draw(view)
    after = surface_to_array(viewer.screen)[area.top : area.bottom, area.left : area.right]
    assert (np.abs(after.astype(int) - before).sum(axis=2) > 30).mean() > 0.5

    # The × closes it; a click on another agent switches; Esc closes without quitting.
    post(pygame.MOUSEBUTTONDOWN, button=1, pos=viewer._panel.close.center)
    viewer.handle_events()
    assert viewer.selected is None and viewer.inspector is None
    ada = placed(viewer.renderer, view, "Ada")
    post(pygame.MOUSEBUTTONDOWN, button=1, pos=(ada.cx, ada.cy))
    post(pygame.KEYDOWN, key=pygame.K_ESCAPE)
    assert viewer.handle_events() and viewer.selected is None


def test_inspector_survives_a_failing_callback():
    def broken(name: str) -> dict[str, str]:
        raise KeyError(name)

    with Viewer(broken, size=SIZE, fps=1000) as v:
        view = make_view()
        v.draw(view)
        cora = placed(v.renderer, view, "Cora")
        post(pygame.MOUSEBUTTONDOWN, button=1, pos=(cora.cx, cora.cy))
        v.handle_events()
        assert v.draw(view)
        assert v.selected == "Cora" and "KeyError" in v.inspector["error"]


def test_drag_pans_and_click_on_ground_closes_inspector(viewer):
    view = make_view()
    viewer.draw(view)
    viewer.select("Ada")
    cam = viewer.renderer.camera
    x0, y0 = cam.offset_x, cam.offset_y
    ground = cam.tile_center(0, 4)
    post(pygame.MOUSEBUTTONDOWN, button=1, pos=ground)
    post(pygame.MOUSEMOTION, pos=(ground[0] + 30, ground[1] + 10), rel=(30, 10), buttons=(1, 0, 0))
    post(pygame.MOUSEBUTTONUP, button=1, pos=(ground[0] + 30, ground[1] + 10))
    viewer.handle_events()
    assert (cam.offset_x - x0, cam.offset_y - y0) == (30, 10)
    assert viewer.selected == "Ada"  # a drag is not a click
    post(pygame.MOUSEBUTTONDOWN, button=1, pos=ground)
    post(pygame.MOUSEBUTTONUP, button=1, pos=ground)
    viewer.handle_events()
    assert viewer.selected is None


def test_keys_pause_step_speed_zoom_pan_and_quit(viewer):
    now = [0.0]
    viewer.clock = lambda: now[0]  # simulated time: speed limits without sleeping
    viewer.draw(make_view())
    assert viewer.should_step()
    post(pygame.KEYDOWN, key=pygame.K_SPACE)
    viewer.handle_events()
    assert viewer.paused and not viewer.should_step()
    post(pygame.KEYDOWN, key=pygame.K_n)
    viewer.handle_events()
    assert viewer.should_step() and not viewer.should_step()  # exactly one step

    post(pygame.KEYDOWN, key=pygame.K_9)
    post(pygame.KEYDOWN, key=pygame.K_LEFTBRACKET)
    viewer.handle_events()
    assert viewer.speed == 8
    post(pygame.KEYDOWN, key=pygame.K_SPACE)
    post(pygame.KEYDOWN, key=pygame.K_1)  # half a tick per second
    viewer.handle_events()
    assert not viewer.paused and viewer.ticks_per_second == 0.5
    now[0] += 10.0
    assert [viewer.should_step() for _ in range(3)] == [True, False, False]
    now[0] += 1.0
    assert not viewer.should_step()
    now[0] += 1.01
    assert viewer.should_step()

    cam = viewer.renderer.camera
    size0 = cam.tile_size
    post(pygame.KEYDOWN, key=pygame.K_EQUALS)
    viewer.handle_events()
    assert cam.tile_size > size0
    x0, y0 = cam.offset_x, cam.offset_y
    post(pygame.KEYDOWN, key=pygame.K_LEFT)
    post(pygame.KEYDOWN, key=pygame.K_s)
    viewer.handle_events()
    assert (cam.offset_x - x0, cam.offset_y - y0) == (PAN_STEP, -PAN_STEP)
    post(pygame.MOUSEWHEEL, x=0, y=-1)
    viewer.handle_events()
    assert cam.tile_size == size0

    post(pygame.KEYDOWN, key=pygame.K_ESCAPE)
    assert not viewer.handle_events()
    assert not viewer.should_step()


def test_window_close_event_stops_the_loop(viewer):
    post(pygame.QUIT)
    assert viewer.handle_events() is False


# ----------------------------------------------------------------------------- recording


@pytest.mark.parametrize("ext", ["gif", "mp4"])
def test_recording_writes_readable_video_with_all_frames(tmp_path, ext):
    path = tmp_path / f"run.{ext}"
    with Recorder(path, size=(200, 150), fps=5) as rec:
        for t in range(4):  # frames differ (tick, Ada moves): GIF writers merge identical frames
            rec.add_frame(make_view(tick=t, Ada=(t, 5)), {"decisions/s": 10.0 * t})
    assert rec.frames == 4
    frames = iio.imread(path, index=None)
    assert frames.shape[:3] == (4, 150, 200)
    with pytest.raises(RecordingError, match="closed"):
        rec.add_frame(make_view())


def test_mp4_size_rounded_to_even(tmp_path):
    with Recorder(tmp_path / "odd.mp4", size=(201, 151)) as rec:
        rec.add_frame(make_view())
    assert rec.size == (200, 150)
    assert iio.imread(tmp_path / "odd.mp4", index=None).shape[1:3] == (150, 200)


def test_snapshot_png_is_readable_and_shows_agents(tmp_path):
    r, view = fixed_renderer(), make_view()
    out = snapshot(view, tmp_path / "shot.png", {"decisions/s": 1.5}, size=(320, 240), renderer=r)
    img = iio.imread(out)
    assert img.shape[:2] == (240, 320)
    p = body_point(placed(r, view, "Cora"))
    assert near(tuple(img[p[1], p[0], :3]), role_color("woodcutter"))
    # Without a renderer the map is fitted to the image.
    fitted = iio.imread(snapshot(view, tmp_path / "fit.png", size=(320, 240)))
    assert luminance(tuple(fitted[240 // 2, 320 // 2, :3])) > 40


def test_bad_targets_give_clear_errors(tmp_path):
    with pytest.raises(RecordingError, match=r"unsupported extension '\.avi'.*\.mp4"):
        Recorder(tmp_path / "run.avi")
    with pytest.raises(RecordingError, match="unsupported extension"):
        snapshot(make_view(), tmp_path / "shot.txt")
    with pytest.raises(RecordingError, match="does not exist"):
        Recorder(tmp_path / "missing" / "run.mp4")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if not os.access(locked, os.W_OK):  # root can write anywhere; nothing to check then
            with pytest.raises(RecordingError, match="permission"):
                snapshot(make_view(), locked / "shot.png")
    finally:
        locked.chmod(0o700)
