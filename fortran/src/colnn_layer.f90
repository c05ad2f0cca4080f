!> The abstract layer. Every layer, built in or a user's own, extends `layer_t`.
!>
!> A layer reads itself from a `layer_spec_t` (`init`), computes y = f(x) over a
!> (features, columns) block (`forward`) and writes itself back (`describe`). `forward` takes the
!> layer as intent(in): layers hold no scratch state, so one network may serve several threads
!> (each with its own workspace).
!>
!> Elementwise layers (activation, dropout, batch normalization at inference) say so through
!> `is_elementwise` and implement `apply_inplace`; the network then applies a run of them in place,
!> column block by column block while the block is in cache. A layer may also split its work into
!> a core part and an in-place `epilogue` (Dense: GEMM, then bias + activation) so that the
!> epilogue joins that same cache-resident pass.
!>
!> What the network, the trainer and the ensemble need to know of a particular layer they ask
!> through type-bound procedures with neutral defaults (`ends_in_softmax`, `backward_logits`,
!> `input_scale`), never by its concrete type: a user's layer overrides what applies to it.
module colnn_layer
  use colnn_kinds, only: wp, i8
  use colnn_status
  use colnn_spec, only: layer_spec_t
  implicit none
  private

  public :: layer_t

  type, abstract :: layer_t
    integer :: n_in = 0
    integer :: n_out = 0
    character(len=:), allocatable :: name
    !> Set by the network: the layer's products must give each column the same bits whatever
    !> the number of columns in the call (layers with a GEMM use gemm_nn_invariant then).
    logical :: batch_invariant = .false.
  contains
    procedure(init_iface), deferred :: init
    procedure(forward_iface), deferred :: forward
    procedure(describe_iface), deferred :: describe
    procedure(type_name_iface), deferred :: type_name
    procedure :: is_elementwise => layer_is_elementwise
    procedure :: apply_inplace => layer_apply_inplace
    procedure :: has_epilogue => layer_has_epilogue
    procedure :: forward_core => layer_forward_core
    procedure :: epilogue => layer_epilogue
    procedure :: num_params => layer_num_params
    procedure :: forward_train => layer_forward_train
    procedure :: backward => layer_backward
    procedure :: ends_in_softmax => layer_ends_in_softmax
    procedure :: backward_logits => layer_backward_logits
    procedure :: input_scale => layer_input_scale
    procedure :: num_trainable => layer_num_trainable
    procedure :: get_params => layer_get_params
    procedure :: set_params => layer_set_params
    procedure :: get_grads => layer_get_grads
    procedure :: num_state => layer_num_state
    procedure :: get_state => layer_get_state
    procedure :: set_state => layer_set_state
  end type layer_t

  abstract interface
    !> Builds the layer from its spec; `n_in` is the feature count of its input. Must set
    !> self%n_in and self%n_out.
    subroutine init_iface(self, spec, n_in, stat, errmsg)
      import :: layer_t, layer_spec_t
      class(layer_t), intent(inout) :: self
      type(layer_spec_t), intent(inout) :: spec
      integer, intent(in) :: n_in
      integer, intent(out) :: stat
      character(len=:), allocatable, intent(out) :: errmsg
    end subroutine init_iface

    subroutine forward_iface(self, nc, x, y)
      import :: layer_t, wp
      class(layer_t), intent(in) :: self
      integer, intent(in) :: nc
      real(wp), intent(in) :: x(self%n_in, nc)
      real(wp), intent(out) :: y(self%n_out, nc)
    end subroutine forward_iface

    !> Fills `spec` (type name, attributes, tensors) for writing to a model file.
    subroutine describe_iface(self, spec)
      import :: layer_t, layer_spec_t
      class(layer_t), intent(in) :: self
      type(layer_spec_t), intent(inout) :: spec
    end subroutine describe_iface

    function type_name_iface(self) result(name)
      import :: layer_t
      class(layer_t), intent(in) :: self
      character(len=:), allocatable :: name
    end function type_name_iface
  end interface

contains

  pure logical function layer_is_elementwise(self)
    class(layer_t), intent(in) :: self
    layer_is_elementwise = .false.
  end function layer_is_elementwise

  !> a = f(a); only called for layers whose is_elementwise() is true.
  subroutine layer_apply_inplace(self, nc, a)
    class(layer_t), intent(in) :: self
    integer, intent(in) :: nc
    real(wp), intent(inout) :: a(self%n_out, nc)
  end subroutine layer_apply_inplace

  pure logical function layer_has_epilogue(self)
    class(layer_t), intent(in) :: self
    layer_has_epilogue = .false.
  end function layer_has_epilogue

  !> The part of forward that precedes the epilogue (all of it for layers without one).
  subroutine layer_forward_core(self, nc, x, y)
    class(layer_t), intent(in) :: self
    integer, intent(in) :: nc
    real(wp), intent(in) :: x(self%n_in, nc)
    real(wp), intent(out) :: y(self%n_out, nc)
    call self%forward(nc, x, y)
  end subroutine layer_forward_core

  subroutine layer_epilogue(self, nc, a)
    class(layer_t), intent(in) :: self
    integer, intent(in) :: nc
    real(wp), intent(inout) :: a(self%n_out, nc)
  end subroutine layer_epilogue

  pure integer(i8) function layer_num_params(self)
    class(layer_t), intent(in) :: self
    layer_num_params = 0
  end function layer_num_params

  !> Training-mode forward (batch statistics, dropout masks); the layer may keep what its
  !> backward needs. By default the same as inference.
  subroutine layer_forward_train(self, nc, x, y)
    class(layer_t), intent(inout) :: self
    integer, intent(in) :: nc
    real(wp), intent(in) :: x(self%n_in, nc)
    real(wp), intent(out) :: y(self%n_out, nc)
    call self%forward(nc, x, y)
  end subroutine layer_forward_train

  !> Given the input x and output y of the last forward_train and dL/dy, computes dL/dx and
  !> stores the gradients of the trainable parameters in the layer (replacing earlier ones).
  subroutine layer_backward(self, nc, x, y, dy, dx, stat, errmsg)
    class(layer_t), intent(inout) :: self
    integer, intent(in) :: nc
    real(wp), intent(in) :: x(self%n_in, nc)
    real(wp), intent(in) :: y(self%n_out, nc)
    real(wp), intent(in) :: dy(self%n_out, nc)
    real(wp), intent(out) :: dx(self%n_in, nc)
    integer, intent(out) :: stat
    character(len=:), allocatable, intent(out) :: errmsg
    dx = 0
    stat = COLNN_ERR_NOT_IMPLEMENTED
    errmsg = 'backward is not implemented for layer type '//self%type_name()
  end subroutine layer_backward

  !> True when the layer's output is a softmax of its own (a softmax activation), so that a
  !> cross-entropy loss can give dL/d(logits) directly and `backward_logits` applies.
  pure logical function layer_ends_in_softmax(self)
    class(layer_t), intent(in) :: self
    layer_ends_in_softmax = .false.
  end function layer_ends_in_softmax

  !> As `backward`, given dL/d(logits), the gradient at the input of the layer's final softmax
  !> (the combined softmax + cross-entropy gradient p - t): the softmax is stepped over. Only
  !> called for layers whose `ends_in_softmax()` is true.
  subroutine layer_backward_logits(self, nc, x, y, dlogits, dx, stat, errmsg)
    class(layer_t), intent(inout) :: self
    integer, intent(in) :: nc                             !! columns of the minibatch
    real(wp), intent(in) :: x(self%n_in, nc)              !! input of the last forward_train
    real(wp), intent(in) :: y(self%n_out, nc)             !! output of the last forward_train
    real(wp), intent(in) :: dlogits(self%n_out, nc)       !! dL/d(input of the softmax)
    real(wp), intent(out) :: dx(self%n_in, nc)            !! dL/dx
    integer, intent(out) :: stat
    character(len=:), allocatable, intent(out) :: errmsg
    dx = 0
    stat = COLNN_ERR_NOT_IMPLEMENTED
    errmsg = 'backward at the logits is not implemented for layer type '//self%type_name()
  end subroutine layer_backward_logits

  !> The divisor by which the layer scales each input feature when it normalizes its inputs (a
  !> Normalization layer: the standard deviations): input noise given in normalized units is
  !> that noise times this scale in the units of the inputs. stat /= 0 for layers that do not
  !> normalize their inputs feature by feature (the default).
  subroutine layer_input_scale(self, scale, stat)
    class(layer_t), intent(in) :: self
    real(wp), allocatable, intent(out) :: scale(:)  !! (n_in) when stat == 0
    integer, intent(out) :: stat
    stat = COLNN_ERR_UNSUPPORTED
  end subroutine layer_input_scale

  !> Trainable values, in Keras' order (Dense: kernel (in, out) row-major, then bias;
  !> BatchNormalization: gamma, beta).
  pure integer function layer_num_trainable(self)
    class(layer_t), intent(in) :: self
    layer_num_trainable = 0
  end function layer_num_trainable

  subroutine layer_get_params(self, p)
    class(layer_t), intent(in) :: self
    real(wp), intent(out) :: p(:)
  end subroutine layer_get_params

  subroutine layer_set_params(self, p)
    class(layer_t), intent(inout) :: self
    real(wp), intent(in) :: p(:)
  end subroutine layer_set_params

  subroutine layer_get_grads(self, g)
    class(layer_t), intent(in) :: self
    real(wp), intent(out) :: g(:)
  end subroutine layer_get_grads

  !> Non-trainable values that training changes (batch-norm moving statistics): a failed
  !> training step puts them back.
  pure integer function layer_num_state(self)
    class(layer_t), intent(in) :: self
    layer_num_state = 0
  end function layer_num_state

  subroutine layer_get_state(self, s)
    class(layer_t), intent(in) :: self
    real(wp), intent(out) :: s(:)
  end subroutine layer_get_state

  subroutine layer_set_state(self, s)
    class(layer_t), intent(inout) :: self
    real(wp), intent(in) :: s(:)
  end subroutine layer_set_state
end module colnn_layer
