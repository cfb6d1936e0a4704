"""How the studio's colour cameras look: which lighting effects and extra geometry they render.

The HMC (near-infrared headset) frames never depend on the look: they are the
encoders' training input and stay byte-identical whatever look a studio has.
The look only changes :meth:`capture.studio.Studio.render_view` and
:meth:`~capture.studio.Studio.render_texture`.

``StudioLook()`` is the realistic default: soft key-light shadows, ambient
occlusion, a subsurface-scattering skin approximation, wet eyes, and hair,
ears, neck and clothed shoulders around the face mesh. ``StudioLook.plain()``
switches every effect off and reproduces the studio's original colour renders
exactly (a textured face mesh with key + fill Blinn-Phong lighting).

Every effect is switched on its own; a look is plain data, so ``repr(look)``
(or :meth:`StudioLook.key`) names it in cache keys of studio renders.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace


@dataclass(frozen=True)
class StudioLook:
    shadows: bool = True
    """Key light casts soft shadows (shadow map + percentage-closer filtering): nose, brows, lids, lips, hair, jaw."""
    shadow_map_size: int = 1024
    """Side of the key light's shadow map in texels (covers head, hair and shoulders)."""
    shadow_softness: float = 0.045
    """Radius of the PCF kernel on the shadow map in dm (how soft the key light's softbox makes shadow edges)."""
    ambient_occlusion: bool = True
    """Ambient and fill light occluded per vertex, per pose: a blend of AO fields precomputed per expression parameter."""
    ao_directions: int = 24
    """Directions whose depth maps sample the ambient occlusion (at start-up)."""
    ao_strength: float = 1.0
    """0 = no darkening, 1 = full occlusion from the depth maps."""
    subsurface: bool = True
    """Skin scatters light: red-shifted wrap diffuse and shadow edges, and translucency where it is thin (ears, nose wings)."""
    skin_specular: bool = True
    """Skin specular as two Fresnel-weighted lobes broken up by pores (instead of one white Blinn-Phong lobe)."""
    rim_light: float = 0.55
    """Strength of a back light from above-behind that outlines the silhouette and shines through the ears (0 = none)."""
    eye_highlights: bool = True
    """Wet cornea: sharp softbox catchlight and a soft studio reflection that follow the view; lids shade the eyeball."""
    hair: bool = True
    """Hair with volume: offset shells over the scalp with a strand texture and a Kajiya-Kay highlight (render only)."""
    hair_shells: int = 6
    """Number of hair shells above the opaque base layer."""
    ears: bool = True
    """Ears at the sides of the head (render only; they are not part of the face mesh)."""
    body: bool = True
    """Neck and clothed shoulders below the head (render only)."""

    @staticmethod
    def plain() -> "StudioLook":
        """Every effect off: the studio's original colour renders, byte for byte."""
        return StudioLook(shadows=False, ambient_occlusion=False, subsurface=False, skin_specular=False, rim_light=0.0,
                          eye_highlights=False, hair=False, ears=False, body=False)

    @property
    def is_plain(self) -> bool:
        """True when no effect is on (the original shading path is used)."""
        return not (self.shadows or self.ambient_occlusion or self.subsurface or self.skin_specular or self.rim_light > 0
                    or self.eye_highlights or self.hair or self.ears or self.body)

    @property
    def has_extras(self) -> bool:
        """True when geometry beyond the face mesh and eyeballs is drawn (hair, ears, body)."""
        return self.hair or self.ears or self.body

    def key(self) -> str:
        """A short stable name for cache keys: ``plain`` or the fields that differ from the default look."""
        if self.is_plain:
            return "plain"
        d = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != getattr(DEFAULT_LOOK, f.name)}
        return "realistic" + "".join(f"|{k}={v}" for k, v in d.items())

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "StudioLook":
        names = {f.name for f in fields(StudioLook)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown look field(s): {', '.join(sorted(unknown))}")
        return StudioLook(**d)

    def with_(self, **changes) -> "StudioLook":
        """A copy with some fields changed, e.g. ``StudioLook().with_(hair=False)``."""
        return replace(self, **changes)

    def __post_init__(self):
        if self.shadow_map_size < 64 or self.shadow_map_size > 8192:
            raise ValueError(f"shadow_map_size must be in [64, 8192], got {self.shadow_map_size}")
        if not 4 <= self.ao_directions <= 64:
            raise ValueError(f"ao_directions must be in [4, 64], got {self.ao_directions}")
        if not 0 <= self.hair_shells <= 32:
            raise ValueError(f"hair_shells must be in [0, 32], got {self.hair_shells}")
        if self.shadow_softness < 0 or self.rim_light < 0 or not 0 <= self.ao_strength <= 1:
            raise ValueError("shadow_softness and rim_light must be >= 0 and ao_strength in [0, 1]")


DEFAULT_LOOK = StudioLook()
PLAIN_LOOK = StudioLook.plain()
CODE_LOOK = PLAIN_LOOK
"""The look codes are defined under: a VAE encoder's input texture is the front texture of the plain look, so an
expression's code (and every HMC encoder trained to predict it) stays the same whatever look the colour cameras
render; the HMC encoders' training data is rendered under it too (:mod:`encoder.data`)."""
