"""The simulated Instagram: a deterministic world, and Instaloader 4.16's real code crawling it."""

from __future__ import annotations

import io
import json
import lzma
import math
import time
from collections import Counter
from pathlib import Path

import instaloader
import numpy as np
import pytest
import requests
import requests_mock
from instaloader.exceptions import (
    ConnectionException,
    LoginRequiredException,
    ProfileNotExistsException,
    QueryReturnedBadRequestException,
)
from PIL import Image
from scipy.stats import spearmanr

from imgrate.crawl.demo import (
    LIKES_SETTLE_DAYS,
    DemoPost,
    DemoWorld,
    FaultConfig,
    WorldConfig,
    likes_fraction,
    serve,
    shortcode_of,
)
from imgrate.errors import DataError, ParamsError, UsersFileError

B64 = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
NAMES = ["alpha_lens", "beta_frames", "gamma_grain"]
SMALL = WorldConfig(seed=4, start="2025-01-01", until="2025-03-15", image_size=64)
LATER = WorldConfig(seed=4, start="2025-01-01", until="2025-04-20", image_size=64)


def _fingerprint(post: DemoPost) -> tuple:
    """Everything about a post that must not change when users are added or the clock moves."""
    return (post.shortcode, post.id, post.taken_at, post.typename, post.n_images, post.appeal,
            post.caption, post.width, post.height, post.index)


# ---- the world


def test_same_seed_same_world_other_seed_other_world():
    a, b = DemoWorld(NAMES, SMALL), DemoWorld(NAMES, SMALL)
    for name in NAMES:
        assert a.user(name) == b.user(name)
        assert a.posts(name) == b.posts(name)
    for post in a.posts("alpha_lens")[:5]:
        assert a.image(post.shortcode) == b.image(post.shortcode) == a.image(post.shortcode)
    c = DemoWorld(NAMES, WorldConfig(seed=5, start=SMALL.start, until=SMALL.until, image_size=64))
    assert c.user("alpha_lens") != a.user("alpha_lens")
    assert {p.shortcode for p in c.posts("alpha_lens")}.isdisjoint(p.shortcode for p in a.posts("alpha_lens"))


def test_adding_users_and_moving_the_clock_only_publishes_new_posts():
    old = DemoWorld(NAMES, SMALL)
    new = DemoWorld(["zeta_first", *NAMES, "omega_last"], LATER)
    for name in NAMES:
        before, after = old.posts(name), new.posts(name)
        published = [p for p in after if p.taken_at > old.clock]
        assert published, name
        assert all(old.clock < p.taken_at <= new.clock for p in published)
        kept = after[len(published):]
        assert [_fingerprint(p) for p in kept] == [_fingerprint(p) for p in before]
        for p, q in zip(before, kept):
            if old.clock - p.taken_at >= LIKES_SETTLE_DAYS * 86_400:  # counts are final after a week
                assert (p.likes, p.comments) == (q.likes, q.comments)
            else:
                assert p.likes <= q.likes
        assert new.image(kept[0].shortcode) == old.image(before[0].shortcode)
        assert new.user(name).followers >= old.user(name).followers
        assert (new.user(name).id, new.user(name).engagement) == (old.user(name).id, old.user(name).engagement)


def test_special_and_unknown_names():
    world = DemoWorld(["quiet_private_lens", "ghost_shooter", "missing_person", "alpha_lens"], SMALL)
    private = world.user("quiet_private_lens")
    assert private.exists and private.is_private and private.followers > 0 and world.posts("quiet_private_lens")
    for name in ("ghost_shooter", "missing_person", "not_in_the_world"):
        assert not world.user(name).exists
        assert world.posts(name) == []
    public = world.user("Alpha_Lens")
    assert public.exists and not public.is_private and 2_000 <= public.followers <= 3_000_000
    with pytest.raises(UsersFileError):
        DemoWorld(["no spaces allowed"], SMALL)
    with pytest.raises(DataError):
        world.post("AAAAAAAAAAA")
    with pytest.raises(ParamsError):
        WorldConfig(until="2024-01-01")


def test_shortcodes_ids_and_times():
    world = DemoWorld(NAMES, SMALL)
    posts = [p for name in NAMES for p in world.posts(name)]
    assert len({p.shortcode for p in posts}) == len({p.id for p in posts}) == len(posts)
    for p in posts:
        assert len(p.shortcode) == 11 and set(p.shortcode) <= B64
        assert 0 < p.id < 2**63
        assert shortcode_of(p.id) == instaloader.Post.mediaid_to_shortcode(p.id) == p.shortcode
        assert world.post(p.shortcode) == p
        assert world.appeal(p.shortcode) == p.appeal
        assert SMALL.start_ts <= p.taken_at <= world.clock
    for name in NAMES:
        times = [p.taken_at for p in world.posts(name)]
        assert all(a - b >= 1 for a, b in zip(times, times[1:])), "newest first, >= 1 s apart"


def test_timeline_pages_and_lookups_agree_with_the_full_list():
    world = DemoWorld(NAMES, SMALL)
    for name in NAMES:
        posts = world.posts(name)
        assert world.post_count(name) == len(posts)
        seen, cursor, more = [], None, True
        while more:
            page, more = world.timeline_page(name, cursor, 7)
            assert page, "no empty page before the end"
            seen += page
            cursor = page[-1].id
        assert seen == posts
        assert world.timeline_page(name, posts[-1].id, 7) == ([], False)
        assert world.timeline_page(name, posts[3].id + 1, 2) == (posts[3:5], True)  # a cursor between ids
    assert world.timeline_page("ghost_shooter", None, 5) == ([], False)
    for bad in ("", "not a code!", "A" * 13, "AAAAAAAAAAA", shortcode_of(world.posts("alpha_lens")[0].id + 1)):
        with pytest.raises(DataError):
            world.post(bad)


def test_a_fresh_world_builds_only_the_posts_it_is_asked_for(tmp_path):
    """A paper-sized world holds ~2,600 posts per user; a crawl that finds nothing new must not
    build them all (it did: 13 s of a no-op `dvc repro` at 71k posts)."""
    old = DemoWorld(NAMES, SMALL)
    _crawl(old, tmp_path, NAMES)
    fresh = DemoWorld(NAMES, SMALL)
    server = _crawl(fresh, tmp_path, NAMES)
    assert server.count("image") == 0
    total = sum(fresh.post_count(n) for n in NAMES)
    built = len(fresh._models)
    assert built <= 12 * len(NAMES) < total  # the first timeline page at most
    assert fresh.posts("alpha_lens") == old.posts("alpha_lens")


def test_until_accepts_a_datetime():
    day = DemoWorld(NAMES, WorldConfig(seed=7, until="2025-02-01", image_size=64))
    noon = DemoWorld(NAMES, WorldConfig(seed=7, until="2025-02-01T12:00:00", image_size=64))
    assert noon.clock == day.clock - 12 * 3600 + 1  # a bare date means the end of that day
    kept = [_fingerprint(p) for p in day.posts("alpha_lens") if p.taken_at <= noon.clock]
    assert [_fingerprint(p) for p in noon.posts("alpha_lens")] == kept


def test_default_world_size_and_mix():
    names = [f"photographer_{i:02d}" for i in range(27)]
    world = DemoWorld(names, WorldConfig())
    counts = [len(world.posts(n)) for n in names]
    assert 2_000 <= sum(counts) <= 3_200
    assert 25 <= min(counts) and max(counts) <= 300
    posts = [p for n in names for p in world.posts(n)]
    types = Counter(p.typename for p in posts)
    assert 0.10 < types["GraphSidecar"] / len(posts) < 0.20
    assert 0.05 < types["GraphVideo"] / len(posts) < 0.11
    assert all(2 <= p.n_images <= 5 for p in posts if p.typename == "GraphSidecar")
    shapes = Counter((p.width, p.height) for p in posts)
    assert shapes[(320, 320)] > len(posts) / 2 and shapes[(256, 320)] > 0 and shapes[(320, 168)] > 0


def test_images_decode_with_the_stated_sizes_and_fast():
    world = DemoWorld(NAMES, WorldConfig(seed=7, until="2025-06-30", image_size=320))
    posts = [p for name in NAMES for p in world.posts(name)][:60]
    start = time.perf_counter()
    blobs = [world.image(p.shortcode) for p in posts]
    per_image = (time.perf_counter() - start) / len(posts)
    assert per_image < 0.025, f"{per_image * 1000:.1f} ms per image"  # ~3 ms measured; generous for CI
    for p, blob in zip(posts, blobs):
        image = Image.open(io.BytesIO(blob))
        assert image.format == "JPEG" and image.mode == "RGB"
        assert image.size == (p.width, p.height) and max(image.size) == 320
    sidecar = next(p for name in NAMES for p in world.posts(name) if p.typename == "GraphSidecar")
    children = [world.image(sidecar.shortcode, i) for i in range(sidecar.n_images)]
    assert len(set(children)) == sidecar.n_images
    with pytest.raises(DataError):
        world.image(sidecar.shortcode, sidecar.n_images)


def _small(blob: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(blob)).convert("RGB").resize((50, 50), Image.BILINEAR)
    return np.asarray(image, np.float32) / 255


def test_appeal_shows_in_the_pixels_and_drives_likes_within_users():
    names = [f"photographer_{i:02d}" for i in range(8)]
    world = DemoWorld(names, WorldConfig(seed=3, until="2025-12-31", image_size=64))
    posts = [p for n in names for p in world.posts(n)]
    assert len(posts) >= 300
    pixels = np.stack([_small(world.image(p.shortcode)) for p in posts])
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    rg, yb = (r - g).reshape(len(posts), -1), (0.5 * (r + g) - b).reshape(len(posts), -1)
    colourfulness = np.hypot(rg.std(1), yb.std(1)) + 0.3 * np.hypot(rg.mean(1), yb.mean(1))
    appeal = np.array([p.appeal for p in posts])
    assert spearmanr(appeal, colourfulness)[0] > 0.3
    # within each user, appeal orders the likes (the learnable part of the task)
    within = [spearmanr([p.appeal for p in world.posts(n)], [p.likes for p in world.posts(n)])[0] for n in names]
    assert np.mean(within) > 0.5


def test_who_posted_explains_likes_across_users():
    names = [f"photographer_{i:02d}" for i in range(27)]
    world = DemoWorld(names, WorldConfig(seed=0, until="2025-12-31", image_size=64))
    log_likes = {n: np.log1p([p.likes for p in world.posts(n)]) for n in names}
    user_mean = np.concatenate([np.full(len(v), v.mean()) for v in log_likes.values()])
    assert spearmanr(user_mean, np.concatenate(list(log_likes.values())))[0] > 0.8
    spreads = sorted(v.std() for v in log_likes.values())
    assert spreads[-1] > 1.5 * spreads[0]
    ratios = [v.max() - np.median(v) for v in log_likes.values()]
    assert max(ratios) > math.log(20), "someone has a viral outlier"


# ---- serving it to Instaloader


class _NoSleep(instaloader.RateController):
    """Instaloader's rate controller would wait 11 minutes after 200 post queries; never wait here."""

    def sleep(self, secs: float) -> None:
        pass


def _loader(root: Path, csrf: bool = True, **options) -> instaloader.Instaloader:
    settings = dict(sleep=False, quiet=True, dirname_pattern=str(root / "{target}"),
                    filename_pattern="{date_utc}_UTC",
                    download_videos=False, download_video_thumbnails=False, download_comments=False,
                    save_metadata=True, compress_json=True, post_metadata_txt_pattern="",
                    max_connection_attempts=1, rate_controller=lambda ctx: _NoSleep(ctx))
    settings.update(options)
    loader = instaloader.Instaloader(**settings)
    if csrf:  # requests-mock keeps no Set-Cookie in the session
        loader.context._session.cookies.set("csrftoken", "x")
    return loader


def _crawl(world: DemoWorld, root: Path, names: list[str], **options):
    """One crawl of ``names`` with latest stamps in root/stamps.ini; returns the server."""
    with requests_mock.Mocker() as mocker:
        server = serve(world, mocker)
        loader = _loader(root, **options)
        profiles = {instaloader.Profile.from_username(loader.context, name) for name in names}
        loader.download_profiles(profiles, profile_pic=False,
                                 latest_stamps=instaloader.LatestStamps(str(root / "stamps.ini")))
    return server


def _expected_files(post: DemoPost, *, thumbnails: bool = False) -> set[str]:
    stem = time.strftime("%Y-%m-%d_%H-%M-%S_UTC", time.gmtime(post.taken_at))
    files = {f"{stem}.json.xz"}
    if post.typename == "GraphImage" or (post.typename == "GraphVideo" and thumbnails):
        files.add(f"{stem}.jpg")
    if post.typename == "GraphSidecar":
        files |= {f"{stem}_{i}.jpg" for i in range(1, post.n_images + 1)}
    return files


def _post_files(folder: Path) -> set[str]:
    return {f.name for f in folder.iterdir() if "_UTC" in f.name}


def test_instaloader_crawls_the_world(tmp_path):
    world = DemoWorld(NAMES, SMALL)
    assert all(10 <= len(world.posts(n)) <= 30 for n in NAMES)
    assert any(p.typename == "GraphSidecar" for n in NAMES for p in world.posts(n))
    server = _crawl(world, tmp_path, NAMES)

    assert server.requests_by_kind["start"] == 1
    assert server.requests_by_kind["bad_query"] == 0
    for name in NAMES:
        posts = world.posts(name)
        assert _post_files(tmp_path / name) == set().union(*(_expected_files(p) for p in posts))
        assert server.count("profile", name) == 2  # Profile.from_username, then get_posts
        assert server.count("post", name) == len(posts)
        assert server.count("timeline", name) == math.ceil(len(posts) / 12) - 1
        assert server.count("image", name) == sum(p.n_images for p in posts if p.typename != "GraphVideo")
        assert server.requests_by_user[name] == (
            2 + len(posts) + server.count("timeline", name) + server.count("image", name))

    user = world.user("alpha_lens")
    profile_json = json.loads(lzma.open(tmp_path / "alpha_lens" / f"alpha_lens_{user.id}.json.xz").read())["node"]
    assert profile_json["edge_followed_by"]["count"] == profile_json["follower_count"] == user.followers
    assert profile_json["edge_follow"]["count"] == user.followees
    assert profile_json["media_count"] == len(world.posts("alpha_lens"))

    context = instaloader.InstaloaderContext(sleep=False, quiet=True)
    with requests_mock.Mocker():  # reading the saved JSON must need no network
        for post in world.posts("alpha_lens"):
            stem = time.strftime("%Y-%m-%d_%H-%M-%S_UTC", time.gmtime(post.taken_at))
            path = tmp_path / "alpha_lens" / f"{stem}.json.xz"
            loaded = instaloader.load_structure_from_file(context, str(path))
            assert (loaded.shortcode, loaded.likes, loaded.comments, loaded.typename) == (
                post.shortcode, post.served_likes, post.comments, post.typename)
            node = json.loads(lzma.open(path).read())["node"]
            assert node["taken_at_timestamp"] == post.taken_at and node["like_count"] == post.served_likes
            assert node["like_and_view_counts_disabled"] is post.likes_hidden
            assert node["owner"]["username"] == "alpha_lens" and int(node["owner"]["id"]) == user.id
            assert "appeal" not in json.dumps(node)
        first = world.posts("alpha_lens")[-1]
        stem = time.strftime("%Y-%m-%d_%H-%M-%S_UTC", time.gmtime(first.taken_at))
        suffix = "_1.jpg" if first.typename == "GraphSidecar" else ".jpg"
        if first.typename != "GraphVideo":
            assert (tmp_path / "alpha_lens" / f"{stem}{suffix}").read_bytes() == world.image(first.shortcode)


def test_recrawl_with_stamps_is_a_noop_and_a_later_clock_fetches_only_new_posts(tmp_path):
    old = DemoWorld(NAMES, SMALL)
    _crawl(old, tmp_path, NAMES)
    before = {name: _post_files(tmp_path / name) for name in NAMES}

    again = _crawl(old, tmp_path, NAMES)
    for name in NAMES:
        assert _post_files(tmp_path / name) == before[name]
        assert again.count("image", name) == again.count("timeline", name) == 0
        assert again.count("profile", name) == 2
        # Instaloader builds each Post from its shortcode (one metadata query) before it checks
        # the stamp, and treats the first 3 posts as possibly pinned: 4 queries to stop.
        assert again.count("post", name) == min(4, len(old.posts(name)))
    assert again.requests_by_kind["start"] == 1

    new = DemoWorld(NAMES, LATER)
    later = _crawl(new, tmp_path, NAMES)
    for name in NAMES:
        fresh = [p for p in new.posts(name) if p.taken_at > old.clock]
        assert fresh
        expected = set().union(*(_expected_files(p) for p in fresh))
        assert _post_files(tmp_path / name) - before[name] == expected
        assert later.count("post", name) == max(len(fresh) + 1, 4)


def test_nonexistent_and_private_profiles(tmp_path):
    world = DemoWorld(["alpha_lens", "quiet_private_lens", "ghost_shooter"], SMALL)
    with requests_mock.Mocker() as mocker:
        server = serve(world, mocker)
        loader = _loader(tmp_path)
        for name in ("ghost_shooter", "missing_person", "not_in_the_world"):
            with pytest.raises(ProfileNotExistsException):
                instaloader.Profile.from_username(loader.context, name)
        private = instaloader.Profile.from_username(loader.context, "quiet_private_lens")
        assert private.is_private and private.followers == world.user("quiet_private_lens").followers
        assert private.mediacount == len(world.posts("quiet_private_lens"))
        with pytest.raises(LoginRequiredException):
            private.get_posts()
        with pytest.raises(LoginRequiredException):
            loader.download_profiles({private}, profile_pic=False, raise_errors=True)
        # without raise_errors, Instaloader saves the profile JSON, logs "Login required." and goes on
        loader.download_profiles({private}, profile_pic=False)
        assert any("Login required" in e for e in loader.context.error_log)
    files = {f.name for f in (tmp_path / "quiet_private_lens").iterdir()}
    assert files == {f"quiet_private_lens_{world.user('quiet_private_lens').id}.json.xz"}
    assert server.count("post") == server.count("timeline") == server.count("image") == 0


def test_the_csrftoken_cookie_saves_a_start_page_per_query(tmp_path):
    world = DemoWorld(["alpha_lens"], SMALL)
    n = len(world.posts("alpha_lens"))
    queries = n + math.ceil(n / 12) - 1
    for csrf, starts in ((False, 1 + queries), (True, 1)):
        with requests_mock.Mocker() as mocker:
            server = serve(world, mocker)
            loader = _loader(tmp_path / str(csrf), csrf=csrf)
            profile = instaloader.Profile.from_username(loader.context, "alpha_lens")
            loader.download_profiles({profile}, profile_pic=False)
        assert server.requests_by_kind["start"] == starts


def test_unserved_endpoints_fail_loudly(tmp_path):
    world = DemoWorld(["alpha_lens"], SMALL)
    with requests_mock.Mocker() as mocker:
        server = serve(world, mocker)
        with pytest.raises(requests_mock.exceptions.NoMockAddress):
            requests.get("https://www.instagram.com/api/v1/users/web_profile_info/?username=alpha_lens")
        with pytest.raises(requests_mock.exceptions.NoMockAddress):
            requests.get("https://www.instagram.com/p/DEcKs-SPXu7/")
        loader = _loader(tmp_path)
        with pytest.raises(QueryReturnedBadRequestException, match="unknown doc_id"):
            loader.context.doc_id_graphql_query("123456", {}, web_api=True)
        with pytest.raises(ConnectionException, match="404"):
            loader.context.get_raw("https://scontent.demo.invalid/img/alpha_lens/AAAAAAAAAAA_0.jpg?x=1")
    assert server.requests_by_kind["bad_query"] == 1


def test_slide_videos_and_profile_pictures(tmp_path):
    """What Instaloader 4.16 does with slide="1", video options and the profile picture."""
    world = DemoWorld(["alpha_lens"], WorldConfig(seed=3, until="2025-03-31", image_size=32,
                                                  sidecar_rate=0.4, video_rate=0.3))
    posts = world.posts("alpha_lens")
    videos = [p for p in posts if p.typename == "GraphVideo"]
    sidecars = [p for p in posts if p.typename == "GraphSidecar"]
    assert videos and sidecars and any(p.n_images > 2 for p in sidecars)
    runs = {
        "slide": dict(slide="1"),
        "thumbs": dict(slide="1", download_video_thumbnails=True),
        "videos": dict(download_videos=True, download_video_thumbnails=True),
    }
    found: dict[str, Counter] = {}
    for run, options in runs.items():
        with requests_mock.Mocker() as mocker:
            server = serve(world, mocker)
            loader = _loader(tmp_path / run, **options)
            loader.download_profiles({instaloader.Profile.from_username(loader.context, "alpha_lens")},
                                     profile_pic=(run == "slide"))
        names = [f.name for f in (tmp_path / run / "alpha_lens").iterdir()]
        found[run] = Counter(name.split("_UTC")[1] for name in names
                             if "_UTC" in name and "profile_pic" not in name)
        if run == "slide":
            assert server.count("profile_pic") == 1
            assert sum(name.endswith("_UTC_profile_pic.jpg") for name in names) == 1
    images = len(posts) - len(videos) - len(sidecars)
    # slide="1": only the first image of a sidecar, as _1.jpg; videos leave only their JSON
    assert found["slide"] == Counter({".json.xz": len(posts), ".jpg": images, "_1.jpg": len(sidecars)})
    # download_video_thumbnails=True adds <date>_UTC.jpg for each video
    assert found["thumbs"][".jpg"] == images + len(videos)
    # download_videos=True fetches the MP4 from video_url; no slide: every sidecar image
    assert found["videos"][".mp4"] == len(videos)
    assert found["videos"]["_2.jpg"] == len(sidecars)


def test_faults_seam():
    assert FaultConfig().rate == 0.0
    with pytest.raises(ParamsError):
        FaultConfig(rate=1.5)
    with pytest.raises(ParamsError):
        FaultConfig(rate=0.1, kinds=("meteor",))
    world = DemoWorld(["alpha_lens"], SMALL)
    with requests_mock.Mocker() as mocker:
        serve(world, mocker, FaultConfig(rate=1.0))
        context = instaloader.InstaloaderContext(sleep=False, quiet=True, max_connection_attempts=1)
        with pytest.raises(ConnectionException, match="500"):
            instaloader.Profile.from_username(context, "alpha_lens")


@pytest.mark.parametrize(
    ("kind", "expect"),
    [("429", "429 Too Many Requests"), ("401", "401 Unauthorized.*Please wait a few minutes"),
     ("500", "500 Internal Server Error"), ("503", "503 Service Unavailable"),
     ("reset", "Connection reset by peer"), ("timeout", "Read timed out")],
)
def test_each_fault_kind_reaches_instaloader_as_instagram_would(kind, expect):
    world = DemoWorld(["alpha_lens"], SMALL)
    with requests_mock.Mocker() as mocker:
        server = serve(world, mocker, FaultConfig(rate=1.0, kinds=(kind,)))
        context = instaloader.InstaloaderContext(sleep=False, quiet=True, max_connection_attempts=1)
        context._session.cookies.set("csrftoken", "x")
        shortcode = world.posts("alpha_lens")[0].shortcode
        with pytest.raises(ConnectionException, match=expect):
            instaloader.Post.from_shortcode(context, shortcode)  # api/graphql through get_json
    assert server.faults_by_kind[kind] >= 1


def test_truncated_and_slow_faults_hit_image_bodies_only():
    world = DemoWorld(["alpha_lens"], SMALL)
    post = world.posts("alpha_lens")[0]
    with requests_mock.Mocker() as mocker:
        server = serve(world, mocker, FaultConfig(rate=1.0, kinds=("truncated",)))
        page = requests.get("https://www.instagram.com/alpha_lens/")  # no image body: served whole
        assert page.status_code == 200 and page.text.endswith("</html>")
        resp = requests.get(server.image_url(post, 0))
        assert resp.status_code == 200 and resp.headers["Content-Type"] == "image/jpeg"
        assert int(resp.headers["Content-Length"]) == len(resp.content) < len(world.image(post.shortcode))
        image = Image.open(io.BytesIO(resp.content))  # the headers are fine...
        with pytest.raises(OSError, match="truncated"):
            image.load()  # ...the pixels are not
        serve(world, mocker, FaultConfig(rate=1.0, kinds=("slow",)))
        start = time.monotonic()
        assert requests.get(server.image_url(post, 0)).content == world.image(post.shortcode)
        assert time.monotonic() - start >= 0.01


def test_throttled_users_are_always_refused():
    world = DemoWorld(["throttled_lens", "alpha_lens"], SMALL)
    with requests_mock.Mocker() as mocker:
        serve(world, mocker)
        answers = [requests.get("https://www.instagram.com/throttled_lens/").status_code for _ in range(4)]
        assert answers == [429, 401, 429, 401]
        assert requests.get("https://www.instagram.com/alpha_lens/").status_code == 200
