// The component's entry: the host's imports in, `init` / `process` out.
// The logic is in pipes.js (tested natively with `node --test`).
import * as hostState from 'plumber:pipe/state@0.1.1';
import { log as hostLog } from 'plumber:pipe/log@0.1.1';
import { exportPipe } from '../../../guest-sdk/js/plumber-pipe.js';
import { Conformance } from './pipes.js';

export const { init, process } = exportPipe(Conformance, { hostState, hostLog });
