!> A feed-forward network: a chain of layers evaluated over (features, columns) arrays.
!>
!> `load` reads a colnn model file or an FKB text file. `forward` cuts the columns into blocks
!> small enough that a block's activations stay in the core's cache through the whole network,
!> and runs the blocks in parallel (OpenMP), each through every layer: one GEMM per dense layer,
!> then one in-place pass for the bias, the activation and the elementwise layers that follow.
!> Work arrays live in a `workspace_t`: the network's own one serves `forward`; `forward_ws`
!> takes a caller's, so several host threads can share one (read-only) network. Workspaces are
!> allocated on the first call and reused: the steady-state call allocates nothing.
!>
!> A network holds what inference needs; training adds a `training_state_t`
!> (colnn_training_state) next to it. This module declares the type and its procedures;
!> colnn_network_submodule implements them.
module colnn_network
  use colnn_kinds, only: wp, sp, dp, i8
  use colnn_spec, only: layer_spec_t
  use colnn_layer, only: layer_t
  implicit none
  private

  public :: network_t, workspace_t, layer_slot_t, BATCH_INVARIANT_DEFAULT

  !> The default of network_t%batch_invariant (bench/batch_invariance.py measured the cost; the
  !> README's "Batch invariance" section gives the figures behind this choice).
  logical, parameter :: BATCH_INVARIANT_DEFAULT = .true.

  type :: layer_slot_t
    class(layer_t), allocatable :: layer
  end type layer_slot_t

  !> One step of the evaluation plan: an out-of-place layer `main` (0 for none), followed by the
  !> in-place run first..last of elementwise layers, with `main`'s epilogue first if it has one.
  type :: step_t
    integer :: main = 0
    logical :: main_epilogue = .false.
    integer :: first = 1, last = 0
    integer :: width = 0
  end type step_t

  !> Work arrays of one caller: per thread slot, two ping-pong buffers of
  !> (max_width, block columns).
  type :: workspace_t
    real(wp), allocatable :: a(:, :), b(:, :)
    integer :: block = 0
  end type workspace_t

  type :: network_t
    integer :: n_inputs = 0, n_outputs = 0, n_layers = 0
    type(layer_slot_t), allocatable :: layers(:)
    character(len=:), allocatable :: source
    character(len=256), allocatable :: meta(:)
    !> Check inputs and outputs for NaN/Inf on each forward (one cheap pass each).
    logical :: check_finite = .true.
    !> Each column's outputs are a pure function of its inputs and the model, whatever the
    !> number of columns per call, the chunking, the threads or the MPI layout (set with
    !> set_batch_invariant; kept across load).
    logical :: batch_invariant = BATCH_INVARIANT_DEFAULT
    !> the widest activation (inputs included): the rows of a workspace column block
    integer :: max_width = 0
    !> the evaluation plan, built at load
    type(step_t), allocatable :: plan(:)
    !> forward's work arrays in a build without OpenMP (with it, each thread has its own)
    type(workspace_t) :: ws
  contains
    procedure :: load => network_load
    procedure :: save => network_save
    procedure, private :: forward_sp => network_forward_sp
    procedure, private :: forward_dp => network_forward_dp
    !> y = network(x) for real32 or real64 arrays, (features, columns) or with
    !> columns_first=.true. (columns, features), whatever the working precision
    generic :: forward => forward_sp, forward_dp
    procedure :: forward_ws => network_forward_ws
    procedure :: num_params => network_num_params
    procedure :: is_loaded => network_is_loaded
    procedure :: set_batch_invariant => network_set_batch_invariant
    procedure :: destroy => network_destroy
    procedure :: num_trainable => network_num_trainable
    procedure :: get_params => network_get_params
    procedure :: set_params => network_set_params
    procedure :: get_grads => network_get_grads
    procedure :: ends_in_softmax => network_ends_in_softmax
    procedure :: input_scale => network_input_scale
    procedure :: num_state => network_num_state
    procedure :: get_state => network_get_state
    procedure :: set_state => network_set_state
  end type network_t

  interface
    !> Batch-invariant products on or off (see `batch_invariant`); may come before or after load.
    module subroutine network_set_batch_invariant(self, flag)
      class(network_t), intent(inout) :: self
      logical, intent(in) :: flag  !! .true.: every column the same bits in any call shape
    end subroutine network_set_batch_invariant

    !> True once a model is loaded (and until destroy).
    pure logical module function network_is_loaded(self)
      class(network_t), intent(in) :: self
    end function network_is_loaded

    !> Empties the network (its layers, plan and workspace); it may be loaded again.
    module subroutine network_destroy(self)
      class(network_t), intent(inout) :: self
    end subroutine network_destroy

    !> Loads a model file (colnn format or FKB text, detected from its first line). On any error
    !> the network is left empty and `errmsg` names the file and what is wrong.
    module subroutine network_load(self, path, stat, errmsg, training)
      class(network_t), intent(inout) :: self
      character(len=*), intent(in) :: path      !! a colnn model file or an FKB text file
      integer, intent(out) :: stat              !! COLNN_OK or the error's status
      character(len=*), intent(out) :: errmsg   !! the file, the line and what is wrong
      !> the file's training block (a checkpoint's optimizer, loss and optimizer state), if it has
      !> one: for trainer_t%restore
      type(layer_spec_t), allocatable, intent(out), optional :: training
    end subroutine network_load

    !> Writes the network as a colnn model file; `training` adds a training block (optimizer state).
    module subroutine network_save(self, path, stat, errmsg, training)
      class(network_t), intent(in) :: self
      character(len=*), intent(in) :: path      !! written atomically
      integer, intent(out) :: stat              !! COLNN_OK or the error's status
      character(len=*), intent(out) :: errmsg
      type(layer_spec_t), intent(in), optional :: training  !! trainer_t%describe's block
    end subroutine network_save

    !> The count of all parameters (weights, biases, normalization and batch-norm statistics).
    pure integer(i8) module function network_num_params(self)
      class(network_t), intent(in) :: self
    end function network_num_params

    !> y = network(x) for real32 arrays: x(n_inputs, nc), y(n_outputs, nc), or with
    !> `columns_first` x(nc, n_inputs), y(nc, n_outputs) (a host's (columns, levels) chunk). The
    !> layout and kind are taken care of where the columns enter and leave the cache-sized work
    !> blocks, so neither costs a copy of its own. Safe to call from several threads at once on
    !> different column chunks (a host's OpenMP loop over chunks, or its own threads): each
    !> calling thread has its own work arrays (thread-local, kept between calls), and the
    !> network itself is only read. Results do not depend on which thread computes a chunk.
    module subroutine network_forward_sp(self, x, y, stat, errmsg, columns_first)
      !> only read, except for its own workspace in a build without OpenMP
      class(network_t), intent(inout) :: self
      real(sp), intent(in) :: x(:, :)           !! (n_inputs, nc), or (nc, n_inputs)
      real(sp), intent(out) :: y(:, :)          !! (n_outputs, nc), or (nc, n_outputs)
      integer, intent(out) :: stat              !! COLNN_OK, or why not (sizes, NaN/Inf)
      character(len=*), intent(out) :: errmsg
      logical, intent(in), optional :: columns_first !! x, y are (columns, features)
    end subroutine network_forward_sp

    !> As forward for real32 arrays, for real64 ones.
    module subroutine network_forward_dp(self, x, y, stat, errmsg, columns_first)
      class(network_t), intent(inout) :: self
      real(dp), intent(in) :: x(:, :)           !! (n_inputs, nc), or (nc, n_inputs)
      real(dp), intent(out) :: y(:, :)          !! (n_outputs, nc), or (nc, n_outputs)
      integer, intent(out) :: stat              !! COLNN_OK, or why not (sizes, NaN/Inf)
      character(len=*), intent(out) :: errmsg
      logical, intent(in), optional :: columns_first !! x, y are (columns, features)
    end subroutine network_forward_dp

    !> As forward, with a caller's workspace (one per thread when threads share the network).
    module subroutine network_forward_ws(self, ws, x, y, stat, errmsg)
      class(network_t), intent(in) :: self
      type(workspace_t), intent(inout) :: ws    !! grown on first use, then reused
      real(wp), intent(in) :: x(:, :)           !! (n_inputs, nc)
      real(wp), intent(out) :: y(:, :)          !! (n_outputs, nc)
      integer, intent(out) :: stat              !! COLNN_OK, or why not (sizes, NaN/Inf)
      character(len=*), intent(out) :: errmsg
    end subroutine network_forward_ws

    !> True when the last layer's output is a softmax (a Dense with softmax activation or a softmax
    !> activation layer): a cross-entropy loss can then give dL/dlogits directly.
    logical module function network_ends_in_softmax(self)
      class(network_t), intent(in) :: self
    end function network_ends_in_softmax

    !> The divisor of the network's leading normalization per input feature (stat /= 0: the
    !> network does not begin with a layer that normalizes its inputs).
    module subroutine network_input_scale(self, scale, stat)
      class(network_t), intent(in) :: self
      real(wp), allocatable, intent(out) :: scale(:)  !! (n_inputs) when stat == 0
      integer, intent(out) :: stat
    end subroutine network_input_scale

    !> The count of trainable values (the length of get_params' and get_grads' vectors).
    pure integer(i8) module function network_num_trainable(self)
      class(network_t), intent(in) :: self
    end function network_num_trainable

    !> All trainable values in Keras' order (model.trainable_variables, each flattened row-major).
    module subroutine network_get_params(self, p)
      class(network_t), intent(in) :: self
      real(wp), intent(out) :: p(:)   !! (num_trainable())
    end subroutine network_get_params

    !> Sets the trainable values from a vector in get_params' order.
    module subroutine network_set_params(self, p)
      class(network_t), intent(inout) :: self
      real(wp), intent(in) :: p(:)    !! (num_trainable())
    end subroutine network_set_params

    !> The gradients of the last backward (training_state_t%backward), in get_params' order.
    module subroutine network_get_grads(self, g)
      class(network_t), intent(in) :: self
      real(wp), intent(out) :: g(:)   !! (num_trainable()); zeros where none was computed
    end subroutine network_get_grads

    !> The count of non-trainable values training changes (batch-norm moving statistics).
    pure integer(i8) module function network_num_state(self)
      class(network_t), intent(in) :: self
    end function network_num_state

    !> Those values, to put back when a training step fails.
    module subroutine network_get_state(self, s)
      class(network_t), intent(in) :: self
      real(wp), intent(out) :: s(:)   !! (num_state())
    end subroutine network_get_state

    module subroutine network_set_state(self, s)
      class(network_t), intent(inout) :: self
      real(wp), intent(in) :: s(:)    !! (num_state()), from get_state
    end subroutine network_set_state
  end interface

end module colnn_network
