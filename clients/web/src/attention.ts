// Getting a dispatcher's attention for a new alert: a chime (unless muted) and the
// count of new alerts in the tab's title, so an alert is noticed in another tab or window.
import type { AlertStore } from "./store";
import { h } from "./ui";

const SOUND_KEY = "securenow.sound";

function soundOn(): boolean {
  return localStorage.getItem(SOUND_KEY) !== "off";
}

/** Two short rising tones through Web Audio (no sound file to load or to fail). */
class Chime {
  private context: AudioContext | null = null;

  play(): void {
    try {
      this.context ??= new AudioContext();
      const ctx = this.context;
      void ctx.resume(); // allowed: the page has had the sign-in gesture
      const start = ctx.currentTime;
      [880, 1175].forEach((frequency, i) => {
        const tone = ctx.createOscillator();
        const gain = ctx.createGain();
        tone.frequency.value = frequency;
        const at = start + i * 0.18;
        gain.gain.setValueAtTime(0.0001, at);
        gain.gain.exponentialRampToValueAtTime(0.3, at + 0.02);
        gain.gain.exponentialRampToValueAtTime(0.0001, at + 0.16);
        tone.connect(gain).connect(ctx.destination);
        tone.start(at);
        tone.stop(at + 0.17);
      });
    } catch {
      // no audio output: the title and the board still show the alert
    }
  }

  close(): void {
    void this.context?.close();
    this.context = null;
  }
}

export class Attention {
  readonly toggle: HTMLButtonElement;
  private readonly chime = new Chime();
  private readonly stop: Array<() => void>;

  constructor(
    store: AlertStore,
    private readonly baseTitle: string,
  ) {
    this.toggle = h("button", {
      type: "button",
      class: "secondary",
      "data-testid": "sound-toggle",
      onclick: () => {
        localStorage.setItem(SOUND_KEY, soundOn() ? "off" : "on");
        this.showToggle();
      },
    });
    this.showToggle();
    this.stop = [
      store.onArrival(() => {
        if (soundOn()) this.chime.play();
      }),
      store.subscribe(() => {
        const n = store.newCount();
        document.title = n ? `(${n}) New SOS · ${baseTitle}` : baseTitle;
      }),
    ];
  }

  private showToggle(): void {
    const on = soundOn();
    this.toggle.textContent = on ? "Sound on" : "Sound off";
    this.toggle.setAttribute("aria-pressed", String(on));
    this.toggle.title = on ? "A chime sounds for each new alert; click to mute" : "New alerts are silent; click to hear a chime";
  }

  dispose(): void {
    for (const stop of this.stop) stop();
    this.chime.close();
    document.title = this.baseTitle;
  }
}
