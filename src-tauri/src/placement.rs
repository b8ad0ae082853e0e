//! Where the popover goes: under the tray icon, centred on it, kept on the
//! icon's screen; or, when the icon's place is unknown, at the top right of
//! the screen's usable area. A pure function of what the tray and the
//! windowing system report, so it is tested here with one and two screens
//! and mixed scale factors.
//!
//! Coordinates, as the crates in `Cargo.lock` report them on macOS:
//! - tray-icon 0.25.1 (`src/platform_impl/macos/mod.rs`, `get_tray_rect`)
//!   gives the icon's rect in "physical" pixels: global logical points
//!   (origin at the top left of the main screen, y down) multiplied by the
//!   backing scale factor of the screen the icon is on. `y` is the *top*
//!   edge of the icon, i.e. the top of the menu bar (y = 0 on the main
//!   screen), which is why tauri-plugin-positioner's `TrayBottomCenter`
//!   (which uses that `y` as the window's top) hid the popover's top under
//!   the menu bar.
//! - tao 0.37.2 (`src/platform_impl/macos/monitor.rs`) gives each monitor's
//!   position and size the same way: global logical points times that
//!   monitor's own scale; tauri-runtime-wry 2.12.3 (`src/monitor/macos.rs`)
//!   gives the work area (`NSScreen.visibleFrame`: without the menu bar and
//!   the Dock) in the same units.
//! - tao's `set_outer_position` divides a physical position by the
//!   window's *current* scale, so the result is given in logical points,
//!   which mean the same on every screen.
//!
//! GTK (Linux) works in logical pixels too (monitor geometry times its
//! scale), so the same arithmetic holds there; its trays report no clicks,
//! so only the fallback is used.

/// A rectangle (`x`, `y` at the top left, y down).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rect {
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
}

impl Rect {
    pub fn new(x: f64, y: f64, w: f64, h: f64) -> Rect {
        Rect { x, y, w, h }
    }
    fn right(&self) -> f64 {
        self.x + self.w
    }
    fn bottom(&self) -> f64 {
        self.y + self.h
    }
    fn contains(&self, x: f64, y: f64) -> bool {
        x >= self.x && x < self.right() && y >= self.y && y < self.bottom()
    }
    fn scaled(&self, by: f64) -> Rect {
        Rect::new(self.x / by, self.y / by, self.w / by, self.h / by)
    }
}

/// One screen, as the windowing system reports it (physical pixels, each
/// screen with its own scale).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Screen {
    /// The whole screen.
    pub frame: Rect,
    /// Without the menu bar and the Dock (or the desktop's panels).
    pub work: Rect,
    pub scale: f64,
}

impl Screen {
    fn logical_frame(&self) -> Rect {
        self.frame.scaled(self.scale)
    }
    fn logical_work(&self) -> Rect {
        self.work.scaled(self.scale)
    }
    /// The menu bar's height in points: what lies above the work area (a
    /// screen without one, e.g. a mirrored display, gets the usual 24).
    fn menu_bar(&self) -> f64 {
        let gap = self.logical_work().y - self.logical_frame().y;
        if gap > 0.0 { gap } else { 24.0 }
    }
}

/// Space between the menu bar and the popover, and from the screen's sides.
const GAP: f64 = 4.0;
const MARGIN: f64 = 8.0;

/// Where the popover's top-left corner goes, in logical points.
///
/// `icon` is the tray icon's rect as tray-icon reports it (physical, see
/// the module's comment); `fallback` is the screen to use without one (the
/// primary screen); `size` is the popover's size in points.
pub fn place(
    icon: Option<Rect>,
    screens: &[Screen],
    fallback: usize,
    size: (f64, f64),
) -> (f64, f64) {
    if let Some(icon) = icon
        && let Some((screen, icon)) = icon_screen(icon, screens)
    {
        return below(icon, &screen, size);
    }
    match screens.get(fallback).or(screens.first()) {
        Some(s) => {
            let work = s.logical_work();
            let x = (work.right() - size.0 - MARGIN).max(work.x);
            (x, work.y + GAP)
        }
        None => (MARGIN, MARGIN),
    }
}

/// The screen the icon is on, and the icon's rect in points.
///
/// The icon's pixels were scaled by its own screen's factor, which is not
/// known in advance: each screen's factor is tried, and the screen that
/// contains the icon's centre at its own factor wins. Two screens can both
/// contain it when their factors differ (a 2x screen's pixels read at 1x
/// land further right); the icon's height then decides, since on its own
/// screen it is as tall as that screen's menu bar.
fn icon_screen(icon: Rect, screens: &[Screen]) -> Option<(Screen, Rect)> {
    screens
        .iter()
        .filter_map(|s| {
            let logical = icon.scaled(s.scale);
            let (cx, cy) = (logical.x + logical.w / 2.0, logical.y + logical.h / 2.0);
            s.logical_frame()
                .contains(cx, cy)
                .then(|| (*s, logical, (logical.h - s.menu_bar()).abs()))
        })
        .min_by(|a, b| a.2.total_cmp(&b.2))
        .map(|(s, r, _)| (s, r))
}

/// Under the icon, centred on it, inside the screen's work area (or at
/// least below its menu bar when the screen is too small for the popover).
fn below(icon: Rect, screen: &Screen, size: (f64, f64)) -> (f64, f64) {
    let work = screen.logical_work();
    let centred = icon.x + icon.w / 2.0 - size.0 / 2.0;
    let right_most = work.right() - size.0 - MARGIN;
    let x = centred.min(right_most).max(work.x + MARGIN);
    let x = if size.0 + 2.0 * MARGIN > work.w {
        work.x
    } else {
        x
    };
    let top = icon.bottom().max(work.y) + GAP;
    // On a short screen, move up to fit, but never over the menu bar.
    let y = top.min(work.bottom() - size.1).max(work.y);
    (x, y)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POPOVER: (f64, f64) = (380.0, 540.0);

    /// A screen given in points at `scale`, with a 24-point menu bar (or
    /// `menu` points) and the Dock at the bottom (70 points).
    fn screen(x: f64, y: f64, w: f64, h: f64, scale: f64, menu: f64) -> Screen {
        let s = |r: Rect| Rect::new(r.x * scale, r.y * scale, r.w * scale, r.h * scale);
        Screen {
            frame: s(Rect::new(x, y, w, h)),
            work: s(Rect::new(x, y + menu, w, h - menu - 70.0)),
            scale,
        }
    }

    /// The icon as tray-icon reports it: its rect in points times its
    /// screen's scale, `y` at the top of the menu bar.
    fn icon(x: f64, y: f64, w: f64, h: f64, scale: f64) -> Rect {
        Rect::new(x * scale, y * scale, w * scale, h * scale)
    }

    #[test]
    fn one_retina_screen_puts_the_popover_under_the_icon_centred() {
        let main = screen(0.0, 0.0, 1512.0, 982.0, 2.0, 37.0);
        // A 30-point-wide icon at x = 1100 in the menu bar (notched: 37 pt).
        let at = place(
            Some(icon(1100.0, 0.0, 30.0, 37.0, 2.0)),
            &[main],
            0,
            POPOVER,
        );
        assert_eq!(at, (1115.0 - 190.0, 37.0 + GAP));
        // Below the menu bar, never at y = 0 (TrayBottomCenter's mistake).
        assert!(at.1 > 37.0);
    }

    #[test]
    fn an_icon_near_the_right_edge_keeps_the_popover_on_screen() {
        let main = screen(0.0, 0.0, 1440.0, 900.0, 1.0, 24.0);
        let (x, y) = place(
            Some(icon(1410.0, 0.0, 24.0, 24.0, 1.0)),
            &[main],
            0,
            POPOVER,
        );
        assert_eq!(x, 1440.0 - 380.0 - MARGIN);
        assert_eq!(y, 24.0 + GAP);
        // And near the left edge.
        let (x, _) = place(Some(icon(2.0, 0.0, 24.0, 24.0, 1.0)), &[main], 0, POPOVER);
        assert_eq!(x, MARGIN);
    }

    #[test]
    fn two_screens_with_different_scales_each_place_it_under_their_own_icon() {
        // A 2x laptop screen on the left, a 1x display to its right.
        let laptop = screen(0.0, 0.0, 1440.0, 900.0, 2.0, 24.0);
        let display = screen(1440.0, 0.0, 1920.0, 1080.0, 1.0, 24.0);
        let screens = [laptop, display];
        // The icon on the display: at 1x its pixels are points. Read at
        // 2x they would also land on the laptop (x = 1000): the height
        // (24 points at 1x, 12 at 2x) says which is right.
        let on_display = icon(2400.0, 0.0, 24.0, 24.0, 1.0);
        assert_eq!(
            place(Some(on_display), &screens, 0, POPOVER),
            (2412.0 - 190.0, 28.0)
        );
        // The icon on the laptop: 2x pixels.
        let on_laptop = icon(1000.0, 0.0, 24.0, 24.0, 2.0);
        assert_eq!(
            place(Some(on_laptop), &screens, 1, POPOVER),
            (1012.0 - 190.0, 28.0)
        );
        // Same layout, screens listed the other way round.
        let swapped = [display, laptop];
        assert_eq!(
            place(Some(on_display), &swapped, 0, POPOVER),
            (2412.0 - 190.0, 28.0)
        );
        assert_eq!(
            place(Some(on_laptop), &swapped, 0, POPOVER),
            (1012.0 - 190.0, 28.0)
        );
    }

    #[test]
    fn a_screen_above_the_main_one_keeps_the_popover_on_the_icons_screen() {
        // A 1x display above a 2x laptop: negative y in global points.
        let laptop = screen(0.0, 0.0, 1512.0, 982.0, 2.0, 37.0);
        let above = screen(-200.0, -1080.0, 1920.0, 1080.0, 1.0, 24.0);
        let on_above = icon(1000.0, -1080.0, 24.0, 24.0, 1.0);
        let (x, y) = place(Some(on_above), &[laptop, above], 0, POPOVER);
        assert_eq!(y, -1080.0 + 24.0 + GAP);
        assert_eq!(x, 1012.0 - 190.0);
        // Near that display's right edge (x = 1720): clamped to it, not to
        // the laptop's (1512).
        let edge = icon(1690.0, -1080.0, 24.0, 24.0, 1.0);
        let (x, _) = place(Some(edge), &[laptop, above], 0, POPOVER);
        assert_eq!(x, 1720.0 - 380.0 - MARGIN);
    }

    #[test]
    fn a_short_screen_moves_the_popover_up_but_not_over_the_menu_bar() {
        let small = screen(0.0, 0.0, 1024.0, 600.0, 1.0, 24.0);
        let (_, y) = place(
            Some(icon(500.0, 0.0, 24.0, 24.0, 1.0)),
            &[small],
            0,
            POPOVER,
        );
        // 600 - 24 - 70 = 506 points of work area: less than 540.
        assert_eq!(y, 24.0);
    }

    #[test]
    fn without_the_icon_it_goes_top_right_of_the_fallback_screen() {
        let laptop = screen(0.0, 0.0, 1440.0, 900.0, 2.0, 24.0);
        let display = screen(1440.0, 0.0, 1920.0, 1080.0, 1.0, 24.0);
        assert_eq!(
            place(None, &[laptop, display], 1, POPOVER),
            (3360.0 - 380.0 - MARGIN, 24.0 + GAP)
        );
        assert_eq!(
            place(None, &[laptop, display], 0, POPOVER),
            (1440.0 - 380.0 - MARGIN, 24.0 + GAP)
        );
        // A fallback index that no longer exists (a screen unplugged).
        assert_eq!(
            place(None, &[laptop], 3, POPOVER),
            (1440.0 - 380.0 - MARGIN, 24.0 + GAP)
        );
        assert_eq!(place(None, &[], 0, POPOVER), (MARGIN, MARGIN));
        // An icon on no known screen (it was just unplugged): the fallback.
        let gone = icon(9000.0, 0.0, 24.0, 24.0, 1.0);
        assert_eq!(
            place(Some(gone), &[laptop], 0, POPOVER),
            (1440.0 - 380.0 - MARGIN, 24.0 + GAP)
        );
    }
}
